// libcurl (Debian libcurl4-openssl-dev): the outbound pool's HTTP/1.1, HTTP/2 and TLS engine.
#ifndef EGRESS_CCURL_SHIM_H
#define EGRESS_CCURL_SHIM_H
#include <curl/curl.h>
#endif
