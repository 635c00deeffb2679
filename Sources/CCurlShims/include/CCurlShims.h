// The outbound pool's only C: typed wrappers for libcurl's variadic setopt/getinfo calls, which Swift cannot import.
// Each forwards to the one variadic function with the argument type curl expects.
#ifndef CEGRESS_CURL_H
#define CEGRESS_CURL_H
#include <curl/curl.h>

CURLcode cegress_easy_setopt_long(CURL *easy, CURLoption option, long value);
CURLcode cegress_easy_setopt_ptr(CURL *easy, CURLoption option, const void *value);
CURLcode cegress_easy_setopt_off(CURL *easy, CURLoption option, curl_off_t value);
CURLcode cegress_easy_setopt_write(CURL *easy, size_t (*callback)(char *, size_t, size_t, void *));
CURLcode cegress_easy_setopt_header(CURL *easy, size_t (*callback)(char *, size_t, size_t, void *));
CURLcode cegress_easy_getinfo_long(CURL *easy, CURLINFO info, long *out);
CURLcode cegress_easy_getinfo_ptr(CURL *easy, CURLINFO info, void **out);
CURLMcode cegress_multi_setopt_long(CURLM *multi, CURLMoption option, long value);
CURLMcode cegress_multi_setopt_ptr(CURLM *multi, CURLMoption option, void *value);
CURLMcode cegress_multi_setopt_socket(CURLM *multi, int (*callback)(CURL *, curl_socket_t, int, void *, void *));
CURLMcode cegress_multi_setopt_timer(CURLM *multi, int (*callback)(CURLM *, long, void *));

extern const long CEGRESS_CURL_POLL_IN;
extern const long CEGRESS_CURL_POLL_OUT;
extern const long CEGRESS_CURL_POLL_REMOVE;
extern const int CEGRESS_CURL_CSELECT_IN;
extern const int CEGRESS_CURL_CSELECT_OUT;
extern const int CEGRESS_CURL_CSELECT_ERR;
extern const curl_socket_t CEGRESS_CURL_SOCKET_TIMEOUT;
extern const size_t CEGRESS_CURL_WRITEFUNC_PAUSE;
extern const int CEGRESS_CURLPAUSE_CONT;
extern const long CEGRESS_CURLPIPE_MULTIPLEX;
extern const long CEGRESS_CURL_HTTP_VERSION_2TLS;
extern const long CEGRESS_CURL_HTTP_VERSION_1_1;
#endif
