// libnghttp2 and libssl (Debian libnghttp2-dev, libssl-dev): the outbound pool's own HTTP/2
// client for held long polls, where a libcurl transfer per poll costs more than the poll.
// OpenSSL never touches a socket here: TLS runs over memory BIOs and the pool moves the bytes
// through EgressPosix, the one syscall seam.
#ifndef EGRESS_CNGHTTP2_SHIM_H
#define EGRESS_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>

/* Macros Swift does not import. */
static inline long cegress_ssl_set_sni(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }
static inline long cegress_ssl_ctx_tls12_floor(SSL_CTX *ctx) { return SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); }
/* Idle connections give their 34 KiB of record buffers back (a held poll is idle ~50 s). */
static inline long cegress_ssl_ctx_release_buffers(SSL_CTX *ctx) { return SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); }
static inline long cegress_bio_pending(BIO *bio) { return (long)BIO_ctrl_pending(bio); }
static inline void cegress_bio_set_mem_eof_return(BIO *bio) { BIO_set_mem_eof_return(bio, -1); }
#endif
