// libyaml (Debian's libyaml-dev): the YAML parser and emitter YAMLNodes wraps.
#include <yaml.h>
