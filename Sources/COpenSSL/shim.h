// libcrypto (Debian libssl-dev): digests today, RS256 signing for GitHub App JWTs later.
#ifndef EGRESS_COPENSSL_SHIM_H
#define EGRESS_COPENSSL_SHIM_H
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#endif
