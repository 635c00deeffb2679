// libcrypto (Debian libssl-dev): RS256 for GitHub App JWTs and agent assertions, RSA-OAEP and
// AES-256-CBC for classic broker message bodies.
#ifndef EGRESS_COPENSSL_SHIM_H
#define EGRESS_COPENSSL_SHIM_H
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/param_build.h>
#include <openssl/core_names.h>
#include <openssl/hmac.h>

/* EVP_PKEY_KEYPAIR is a macro of macros, which Swift does not import. */
static inline int cegress_evp_pkey_keypair(void) { return EVP_PKEY_KEYPAIR; }
#endif
