#include "CCurlShims.h"

CURLcode cegress_easy_setopt_long(CURL *easy, CURLoption option, long value) { return curl_easy_setopt(easy, option, value); }
CURLcode cegress_easy_setopt_ptr(CURL *easy, CURLoption option, const void *value) { return curl_easy_setopt(easy, option, value); }
CURLcode cegress_easy_setopt_off(CURL *easy, CURLoption option, curl_off_t value) { return curl_easy_setopt(easy, option, value); }
CURLcode cegress_easy_setopt_write(CURL *easy, size_t (*callback)(char *, size_t, size_t, void *)) {
    return curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, callback);
}
CURLcode cegress_easy_setopt_header(CURL *easy, size_t (*callback)(char *, size_t, size_t, void *)) {
    return curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, callback);
}
CURLcode cegress_easy_getinfo_long(CURL *easy, CURLINFO info, long *out) { return curl_easy_getinfo(easy, info, out); }
CURLcode cegress_easy_getinfo_ptr(CURL *easy, CURLINFO info, void **out) { return curl_easy_getinfo(easy, info, out); }
CURLMcode cegress_multi_setopt_long(CURLM *multi, CURLMoption option, long value) { return curl_multi_setopt(multi, option, value); }
CURLMcode cegress_multi_setopt_ptr(CURLM *multi, CURLMoption option, void *value) { return curl_multi_setopt(multi, option, value); }
CURLMcode cegress_multi_setopt_socket(CURLM *multi, int (*callback)(CURL *, curl_socket_t, int, void *, void *)) {
    return curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, callback);
}
CURLMcode cegress_multi_setopt_timer(CURLM *multi, int (*callback)(CURLM *, long, void *)) {
    return curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, callback);
}

const long CEGRESS_CURL_POLL_IN = CURL_POLL_IN;
const long CEGRESS_CURL_POLL_OUT = CURL_POLL_OUT;
const long CEGRESS_CURL_POLL_REMOVE = CURL_POLL_REMOVE;
const int CEGRESS_CURL_CSELECT_IN = CURL_CSELECT_IN;
const int CEGRESS_CURL_CSELECT_OUT = CURL_CSELECT_OUT;
const int CEGRESS_CURL_CSELECT_ERR = CURL_CSELECT_ERR;
const curl_socket_t CEGRESS_CURL_SOCKET_TIMEOUT = CURL_SOCKET_TIMEOUT;
const size_t CEGRESS_CURL_WRITEFUNC_PAUSE = CURL_WRITEFUNC_PAUSE;
const int CEGRESS_CURLPAUSE_CONT = CURLPAUSE_CONT;
const long CEGRESS_CURLPIPE_MULTIPLEX = CURLPIPE_MULTIPLEX;
const long CEGRESS_CURL_HTTP_VERSION_2TLS = CURL_HTTP_VERSION_2TLS;
const long CEGRESS_CURL_HTTP_VERSION_1_1 = CURL_HTTP_VERSION_1_1;
