import CNghttp2

/// The multiplexer's one `SSL_CTX`: peer verification against the pool's CA bundle (or the
/// system's), TLS 1.2 at least, ALPN offering h2 then http/1.1 (an origin that picks
/// http/1.1 is left to curl). Used only on the pool's loop.
final class TLSClientContext {
    let context: OpaquePointer

    /// nil with OpenSSL's reason when the context or the CA bundle cannot be set up.
    static func make(caBundle: String?) -> Result<TLSClientContext, OutboundError> {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_client_method()) else { return .failure(tlsError("SSL_CTX_new")) }
        let made = TLSClientContext(context: context)
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        _ = cegress_ssl_ctx_tls12_floor(context)
        _ = cegress_ssl_ctx_release_buffers(context)
        let loaded = caBundle.map { SSL_CTX_load_verify_locations(context, $0, nil) } ?? SSL_CTX_set_default_verify_paths(context)
        guard loaded == 1 else { return .failure(tlsError("CA bundle \(caBundle ?? "(system)")")) }
        let protocols: [UInt8] = [2] + Array("h2".utf8) + [8] + Array("http/1.1".utf8)
        // SSL_CTX_set_alpn_protos returns 0 on success, unlike the rest of OpenSSL.
        guard protocols.withUnsafeBufferPointer({ SSL_CTX_set_alpn_protos(context, $0.baseAddress, UInt32($0.count)) }) == 0 else {
            return .failure(tlsError("ALPN"))
        }
        return .success(made)
    }

    private init(context: OpaquePointer) { self.context = context }

    deinit { SSL_CTX_free(context) }
}

/// OpenSSL's first queued error as an `OutboundError(.tls)` (the queue is cleared).
func tlsError(_ what: String, verifyResult: Int = Int(X509_V_OK)) -> OutboundError {
    var detail = what
    if verifyResult != Int(X509_V_OK) {
        detail += ": certificate verify failed (\(String(cString: X509_verify_cert_error_string(verifyResult))))"
    } else {
        let code = ERR_get_error()
        if code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            detail += ": " + String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
    ERR_clear_error()
    return OutboundError(kind: .tls, detail: detail)
}

/// One TLS client session over two memory BIOs: ciphertext read from the socket is fed in
/// (`feed`), ciphertext to send is taken out (`takeCiphertext`). OpenSSL never sees the
/// descriptor, so every syscall stays in EgressPosix and the connection decides when to read
/// and write. Owns its `SSL` (and through it both BIOs); loop thread only.
final class TLSStream {
    private let ssl: OpaquePointer
    private let incoming: OpaquePointer
    private let outgoing: OpaquePointer

    /// What a handshake step or a read came to.
    enum Step: Equatable {
        case done
        /// OpenSSL needs more ciphertext from the peer (or to send what it queued first).
        case wantIO
        case closed
        case failed(OutboundError)
    }

    /// A client session for `host`: SNI unless it is an IP literal, and name (or IP)
    /// verification of the peer's certificate.
    init?(context: TLSClientContext, host: String) {
        guard let ssl = SSL_new(context.context) else { return nil }
        guard let incoming = BIO_new(BIO_s_mem()), let outgoing = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            return nil
        }
        // An empty memory BIO must read as "retry later", not as end of stream.
        cegress_bio_set_mem_eof_return(incoming)
        cegress_bio_set_mem_eof_return(outgoing)
        SSL_set_bio(ssl, incoming, outgoing)
        self.ssl = ssl
        self.incoming = incoming
        self.outgoing = outgoing
        let literal = host.contains(":") || host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
        if !literal { _ = cegress_ssl_set_sni(ssl, host) }
        // SSL_set1_host takes IP literals too (OpenSSL 3), checked against the IP SANs.
        _ = SSL_set1_host(ssl, host)
        SSL_set_connect_state(ssl)
    }

    deinit { SSL_free(ssl) }

    /// Ciphertext from the socket.
    func feed(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let written = BIO_write(incoming, bytes.baseAddress?.advanced(by: offset), Int32(bytes.count - offset))
            guard written > 0 else { return }
            offset += Int(written)
        }
    }

    func handshake() -> Step {
        ERR_clear_error()
        let result = SSL_do_handshake(ssl)
        if result == 1 { return .done }
        return step(after: result, what: "TLS handshake")
    }

    /// The protocol ALPN settled on ("h2", "http/1.1"), nil when the server chose none.
    var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// Plaintext into `buffer`: `.done` with the count in `count`, else why nothing came.
    func read(into buffer: UnsafeMutableRawBufferPointer, count: inout Int) -> Step {
        ERR_clear_error()
        let result = SSL_read(ssl, buffer.baseAddress, Int32(buffer.count))
        if result > 0 {
            count = Int(result)
            return .done
        }
        return step(after: result, what: "TLS read")
    }

    /// Plaintext to send; with memory BIOs the whole buffer is always taken.
    func write(_ bytes: UnsafeRawBufferPointer) -> Step {
        guard bytes.count > 0 else { return .done }
        ERR_clear_error()
        let result = SSL_write(ssl, bytes.baseAddress, Int32(bytes.count))
        return result > 0 ? .done : step(after: result, what: "TLS write")
    }

    /// Moves the ciphertext OpenSSL produced onto `out`.
    func takeCiphertext(into out: inout [UInt8]) {
        let pending = Int(cegress_bio_pending(outgoing))
        guard pending > 0 else { return }
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: pending))
        let read = out.withUnsafeMutableBufferPointer { BIO_read(outgoing, $0.baseAddress?.advanced(by: start), Int32(pending)) }
        out.removeLast(pending - Int(max(0, read)))
    }

    private func step(after result: Int32, what: String) -> Step {
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantIO
        case SSL_ERROR_ZERO_RETURN: return .closed
        default: return .failed(tlsError(what, verifyResult: Int(SSL_get_verify_result(ssl))))
        }
    }
}
