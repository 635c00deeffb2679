import EgressPosix
import Testing

@testable import EgressProxyCore

/// Feeds `text` to a fresh parser, in pieces of `chunk` bytes (the same growing prefix each
/// call, as the tunnel does with its buffer).
func parse(_ text: String, limit: Int = 8192, chunk: Int? = nil) -> RequestHeadParser.Outcome {
    let bytes = Array(text.utf8)
    var parser = RequestHeadParser(limit: limit)
    let step = chunk ?? max(1, bytes.count)
    var end = 0
    var outcome = RequestHeadParser.Outcome.needMore
    repeat {
        end = min(bytes.count, end + step)
        outcome = bytes[0..<end].withUnsafeBytes { parser.parse($0) }
        if outcome != .needMore { return outcome }
    } while end < bytes.count
    return outcome
}

func connect(_ host: Authority.Host, _ port: UInt16) -> RequestHead.Kind { .connect(Authority(host: host, port: port)) }

@Suite struct RequestHeadParserTests {
    @Test(arguments: [
        ("CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n", "github.com", UInt16(443), 1),
        ("CONNECT GitHub.COM.:443 HTTP/1.0\r\n\r\n", "github.com", 443, 0),
        ("CONNECT a-b_c.example:8443 HTTP/1.1\r\nUser-Agent: curl/8\r\nProxy-Connection: Keep-Alive\r\n\r\n", "a-b_c.example", 8443, 1),
    ])
    func validConnectByName(text: String, host: String, port: UInt16, minor: Int) {
        guard case .complete(let head, let length) = parse(text) else {
            Issue.record("not complete: \(parse(text))")
            return
        }
        #expect(head.kind == connect(.name(host), port))
        #expect(head.minorVersion == minor)
        #expect(length == text.utf8.count)
    }

    @Test func ipLiterals() {
        guard case .complete(let v4, _) = parse("CONNECT 192.0.2.1:443 HTTP/1.1\r\n\r\n"),
            case .complete(let v6, _) = parse("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n"),
            case .complete(let mapped, _) = parse("CONNECT [::ffff:127.0.0.1]:22 HTTP/1.1\r\n\r\n")
        else {
            Issue.record("literal not parsed")
            return
        }
        #expect(v4.kind == connect(.ip(IPAddress("192.0.2.1")!), 443))
        #expect(v6.kind == connect(.ip(IPAddress("2001:db8::1")!), 443))
        #expect(mapped.kind == connect(.ip(IPAddress("::ffff:127.0.0.1")!), 22))
    }

    @Test func earlyDataIsNotPartOfTheHead() {
        let head = "CONNECT github.com:443 HTTP/1.1\r\n\r\n"
        guard case .complete(_, let length) = parse(head + "\u{16}\u{03}\u{01}hello") else {
            Issue.record("not complete")
            return
        }
        #expect(length == head.utf8.count)
    }

    @Test func headersAreKeptInOrderWithValuesTrimmed() {
        guard case .complete(let head, _) = parse("CONNECT h.example:443 HTTP/1.1\r\nA:  one \r\nb:\ttwo\r\nA: three\r\n\r\n") else {
            Issue.record("not complete")
            return
        }
        #expect(head.headers.map(\.name) == ["A", "b", "A"])
        #expect(head.headers.map(\.value) == ["one", "two", "three"])
        #expect(head.header("a") == "one")
    }

    @Test func arrivalSplitAtEveryByteGivesTheSameResult() {
        let text = "CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\nUser-Agent: x\r\n\r\nEARLY"
        let whole = parse(text)
        for chunk in 1...text.utf8.count {
            #expect(parse(text, chunk: chunk) == whole, "chunk size \(chunk)")
        }
        // And a byte at a time, checking nothing completes before the final LF.
        let bytes = Array(text.utf8)
        let headLength = text.utf8.count - 5
        var parser = RequestHeadParser(limit: 8192)
        for end in 1..<headLength {
            #expect(bytes[0..<end].withUnsafeBytes { parser.parse($0) } == .needMore, "prefix \(end)")
        }
        #expect(bytes[0..<headLength].withUnsafeBytes { parser.parse($0) } == whole)
    }

    @Test(arguments: [
        // request line shape
        "CONNECT github.com:443\r\n\r\n",
        "CONNECT  github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:443  HTTP/1.1\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1 \r\n\r\n",
        " CONNECT github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:443 HTTP/2.0\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.2\r\n\r\n",
        "CONNECT github.com:443 http/1.1\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nHost: x\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nHost: x\rY\r\n\r\n",
        "\r\n\r\n",
        "CON\u{7f}NECT github.com:443 HTTP/1.1\r\n\r\n",
        // headers
        "CONNECT github.com:443 HTTP/1.1\r\n folded: yes\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nHost: a\r\n\tcontinued\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nNoColon\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nHost : x\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\n: empty\r\n\r\n",
        "CONNECT github.com:443 HTTP/1.1\r\nX: a\u{01}b\r\n\r\n",
        // CONNECT targets
        "CONNECT github.com HTTP/1.1\r\n\r\n",
        "CONNECT github.com: HTTP/1.1\r\n\r\n",
        "CONNECT github.com:0 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:65536 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:99999999 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:-1 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:+443 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:44a HTTP/1.1\r\n\r\n",
        "CONNECT user@github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT user:pw@github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT github.com:443/path HTTP/1.1\r\n\r\n",
        "CONNECT https://github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT /github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT git%68ub.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT github..com:443 HTTP/1.1\r\n\r\n",
        "CONNECT .github.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT github.com..:443 HTTP/1.1\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\n\r\n",
        "CONNECT [::1:443 HTTP/1.1\r\n\r\n",
        "CONNECT [::1]443 HTTP/1.1\r\n\r\n",
        "CONNECT ::1:443 HTTP/1.1\r\n\r\n",
        "CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
        "CONNECT [fe80::1%eth0]:443 HTTP/1.1\r\n\r\n",
        "CONNECT [127.0.0.1]:443 HTTP/1.1\r\n\r\n",
        "CONNECT [github.com]:443 HTTP/1.1\r\n\r\n",
        "CONNECT 127.1:443 HTTP/1.1\r\n\r\n",
        "CONNECT 2130706433:443 HTTP/1.1\r\n\r\n",
        "CONNECT 0x7f000001:443 HTTP/1.1\r\n\r\n",
        "CONNECT 0x7f.0.0.1:443 HTTP/1.1\r\n\r\n",
        "CONNECT 0177.0.0.1:443 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.01:443 HTTP/1.1\r\n\r\n",
        "CONNECT 127.0.0.1.5:443 HTTP/1.1\r\n\r\n",
        "CONNECT 256.0.0.1:443 HTTP/1.1\r\n\r\n",
        "CONNECT evil.0x10:443 HTTP/1.1\r\n\r\n",
        "CONNECT git\u{00fc}b.com:443 HTTP/1.1\r\n\r\n",
        "CONNECT github.com!:443 HTTP/1.1\r\n\r\n",
        "GET https://github.com/ HTTP/1.1\r\n\r\n",
        "GET http://user@github.com/ HTTP/1.1\r\n\r\n",
        "GET http:///path HTTP/1.1\r\n\r\n",
        "GET http://github.com:0/ HTTP/1.1\r\n\r\n",
    ])
    func malformedIsBadRequest(text: String) {
        guard case .rejected(let rejection) = parse(text) else {
            Issue.record("accepted: \(text.debugDescription) -> \(parse(text))")
            return
        }
        #expect(rejection.status == 400, "\(text.debugDescription): \(rejection)")
    }

    @Test func overlongLabelAndName() {
        let label64 = String(repeating: "a", count: 64)
        let label63 = String(repeating: "a", count: 63)
        #expect(parse("CONNECT \(label64).com:443 HTTP/1.1\r\n\r\n") != .needMore)
        if case .rejected(let rejection) = parse("CONNECT \(label64).com:443 HTTP/1.1\r\n\r\n") {
            #expect(rejection == .badRequest("authority_labelTooLong"))
        } else {
            Issue.record("64-byte label accepted")
        }
        let name254 = Array(repeating: label63, count: 4).joined(separator: ".") + ".ab"  // 257 bytes
        if case .rejected(let rejection) = parse("CONNECT \(name254):443 HTTP/1.1\r\n\r\n") {
            #expect(rejection == .badRequest("authority_nameTooLong"))
        } else {
            Issue.record("over-long name accepted")
        }
        let name253 = Array(repeating: label63, count: 3).joined(separator: ".") + "." + String(repeating: "b", count: 61)
        #expect(name253.utf8.count == 253)
        if case .complete(let head, _) = parse("CONNECT \(name253).:443 HTTP/1.1\r\n\r\n") {
            #expect(head.kind == connect(.name(name253), 443))
        } else {
            Issue.record("253-byte name with trailing dot refused")
        }
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET * HTTP/1.1\r\n\r\n", 405),
        ("OPTIONS * HTTP/1.1\r\n\r\n", 405),
        ("TRACE http://example.com/ HTTP/1.1\r\n\r\n", 405),
        ("BREW http://example.com/ HTTP/1.1\r\n\r\n", 405),
        ("connect github.com:443 HTTP/1.1\r\n\r\n", 405),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ])
    func methodAndTargetForms(text: String, status: Int) {
        guard case .rejected(let rejection) = parse(text) else {
            Issue.record("accepted: \(text.debugDescription)")
            return
        }
        #expect(rejection.status == status)
    }

    @Test func absoluteFormIsForwarded() {
        guard case .complete(let head, _) = parse("GET http://Deb.Debian.org/debian/dists?x=1#frag HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n"),
            case .complete(let withPort, _) = parse("POST http://[::1]:8080 HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        else {
            Issue.record("absolute form not parsed")
            return
        }
        #expect(head.kind == .forward(method: "GET", authority: Authority(host: .name("deb.debian.org"), port: 80), path: "/debian/dists?x=1"))
        #expect(withPort.kind == .forward(method: "POST", authority: Authority(host: .ip(IPAddress("::1")!), port: 8080), path: "/"))
    }

    @Test func headerLimit() {
        let big = "CONNECT github.com:443 HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000) + "\r\n\r\n"
        #expect(parse(big) == .rejected(.headerTooLarge))
        #expect(parse(big, chunk: 1000) == .rejected(.headerTooLarge))
        // Incomplete but already at the limit: refuse without waiting for the rest.
        #expect(parse("CONNECT github.com:443 HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000)) == .rejected(.headerTooLarge))
        let fields = (0..<101).map { "X-\($0): v\r\n" }.joined()
        #expect(parse("CONNECT github.com:443 HTTP/1.1\r\n" + fields + "\r\n") == .rejected(.headerTooLarge))
        let justUnder = "CONNECT github.com:443 HTTP/1.1\r\nX: " + String(repeating: "a", count: 100) + "\r\n\r\n"
        #expect(parse(justUnder, limit: justUnder.utf8.count) != .rejected(.headerTooLarge))
        #expect(parse(justUnder, limit: justUnder.utf8.count - 1) == .rejected(.headerTooLarge))
    }
}
