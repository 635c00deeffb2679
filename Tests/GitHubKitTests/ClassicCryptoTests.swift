import Foundation
import GitHubKit
import Testing

/// The classic session's cryptography against vectors made by an independent implementation
/// (Python's `cryptography`, from reference 1.4 and 2.1): a 1024-bit agent key as .NET writes
/// `.credentials_rsaparams` (PascalCase, a BOM), a session key wrapped with RSA-OAEP SHA-1,
/// and a body sealed with AES-256-CBC under it.
@Suite struct ClassicCryptoTests {
    static let rsaparams = #"{"Modulus": "owJy70JulGqXoQTBnRpyfK0bF8PjS98SIMJja++npW3menXgpsEQyVVKTnXR6ryGlHEGzIWnf8JnjJXgHyXkzVhynK2kbkRdIHr0VAtJPORQBkdSdEhGAX80PM1Bcr/x7koSs9yauvNiPWK4zogw3s6/HbwNQBDZ+MT5CKgVFvc=", "Exponent": "AQAB", "D": "Q+ShOkXRCL/cp5PzkBuT05nFzwAni1I9mqdcAXivupcrh5XRG6MN+s0rRcKMy9f5tZnd2xFP0kaGGmfSEScXREVWP+GHctOJkh95R6ZvQeudgHoCx45Hm9jLo7J/Q2wiZ3cjHj5hwtIrdIa7LdV2XqLokKrk4uBlqNAPa/nOiAE=", "P": "1j9GK1piWcyzose0vjU0WOZoYjV1MW6FwnSQs7hRAumz6hHTSdyUaj3XXN/3pzw5bvE95IJwB2a3evc1cv7Y4Q==", "Q": "wsbyWM3oP9TMfzuPsppoVH8cn8FyLJuqQG4Swd+o/ACKkR+WuvVcXrEXOLg73Lbu90u9cjNZcOkdXxaR/tEy1w==", "DP": "GHCXXJKu7XeAdm05nQkMs6d0+N8IQ19MOuZ5K0c3VpG6SFVIOQDEnWn4i0uxQI6KLrGuUcbfaLi67XgNzNRtgQ==", "DQ": "TBDZ8ChpvRPj0QR3t+5pNCZ4DUPEzPr14Dech65LFi837jkB6n2L10cdpH7+kdG3PUiM8Z5wHZJMcCgmV/dm/Q==", "InverseQ": "YPPEv+SWnVBa9ZSXiqIy9LPq8HzuHHNEN5ksiSI1LdQe3HBOFn+CWhrNE78O8cLyXZTN66d4UDOFPLEB6gWNTg=="}"#
    static let wrapped = "JDA2FsPc5jsE0dI3ic7Jzf1bHga6H9kqiUw7w4SrHxj3Ge81EaMPMtuAVvfeVTR6FggNoDir06F3p5UM0vskK4ZnDC3FYb1mH3ViV29sKCmGfdFPISnVowqpA+flOpRkn9sNf/G8915F/laIb3QEkOFXLQFtvYq6HhnPvYmpHZU="
    static let sessionKey = "3SOf2/1+cvmRZHU0xf8bP0jMbxglphryTO150X73Aec="
    static let ciphertext = "LC07LxtPPv3PBEnSFrN8jAAJvJtRdUKO49wTdwKrq3NcVVO49s9BLkj9G4sVmF2AYgRsEPenJcL80lGqH307S1paOG1Na2D1i4UQFbPX+TEVNyt/N26KabBi93T1Kr2VERwAdoKS5547AamdR26ehcoGyb4FXc0rDCbCk0xnuK4="
    static let body = #"{"runner_request_id": 5000001, "run_service_url": "https://run.example/abc", "billing_owner_id": "b"}"#

    /// A JIT blob around the vector key: base64 of {file: base64(content)}.
    static func blob(runner: String = #"{"agentId":17,"agentName":"cpu-1","serverUrl":"https://old.example","serverUrlV2":"https://broker.example/","useV2Flow":true}"#) -> String {
        func encode(_ text: String, bom: Bool = false) -> String { Data((bom ? [0xEF, 0xBB, 0xBF] : []) + Array(text.utf8)).base64EncodedString() }
        let files = [".runner": encode(runner), ".credentials_rsaparams": encode(rsaparams, bom: true),
                     ".credentials": encode(#"{"scheme":"OAuth","data":{"clientId":"client-9","authorizationUrl":"https://token.example/oauth"}}"#)]
        return ((try? JSONSerialization.data(withJSONObject: files)) ?? Data()).base64EncodedString()
    }

    @Test func theBlobGivesTheAgentItsBrokerAndAUsableKey() throws {
        let credentials = try AgentCredentials(encodedJITConfig: Self.blob())
        #expect(credentials.agentID == 17 && credentials.agentName == "cpu-1")
        #expect(credentials.brokerURL == "https://broker.example", "serverUrlV2 first, without its trailing slash")
        #expect(credentials.clientID == "client-9" && credentials.authorizationURL == "https://token.example/oauth")
        let key = try #require(Base64.decode(Self.sessionKey))
        #expect(credentials.key.unwrap(try #require(Base64.decode(Self.wrapped))) == key, "RSA-OAEP SHA-1 unwrap")
        #expect(BrokerCipher.decrypt(Self.ciphertext, key: key).map { String(decoding: $0, as: UTF8.self) } == Self.body)
        var wrong = key
        wrong[0] ^= 1
        #expect(BrokerCipher.decrypt(Self.ciphertext, key: wrong) != Array(Self.body.utf8), "another key never yields the body")
        #expect(BrokerCipher.decrypt("not base64!", key: key) == nil)
    }

    @Test func serverUrlServesWhenThereIsNoV2URL() throws {
        let credentials = try AgentCredentials(encodedJITConfig: Self.blob(runner: #"{"agentId":"18","serverUrl":"https://pipelines.example"}"#))
        #expect(credentials.agentID == 18 && credentials.brokerURL == "https://pipelines.example")
    }

    @Test func brokenBlobsAreClearErrors() {
        #expect(throws: AgentCredentials.ParseError.self) { try AgentCredentials(encodedJITConfig: "%%%") }
        #expect(throws: AgentCredentials.ParseError.self) { try AgentCredentials(encodedJITConfig: Data("{}".utf8).base64EncodedString()) }
        // A modulus that does not belong to the other parts is refused, not used to sign garbage.
        let mixed = Self.rsaparams.replacingOccurrences(of: "\"Modulus\": \"", with: "\"Modulus\": \"AAAB")
        let files = [".runner": Data(#"{"agentId":1,"serverUrl":"https://b.example"}"#.utf8).base64EncodedString(),
                     ".credentials": Data(#"{"data":{"clientId":"c","authorizationUrl":"https://t.example"}}"#.utf8).base64EncodedString(),
                     ".credentials_rsaparams": Data(mixed.utf8).base64EncodedString()]
        let blob = (try? JSONSerialization.data(withJSONObject: files))?.base64EncodedString() ?? ""
        #expect(throws: AgentCredentials.ParseError.self) { try AgentCredentials(encodedJITConfig: blob) }
    }

    @Test func theAssertionHasExactlyTheReferenceClaimsAndNoKidOrIat() throws {
        let credentials = try AgentCredentials(encodedJITConfig: Self.blob())
        let assertion = try #require(ClientAssertion.make(credentials: credentials, now: 1_800_000_000, jti: "3f2504e0-4f89-11d3-9a0c-0305e82c3301"))
        let parts = assertion.split(separator: ".").map(String.init)
        #expect(parts.count == 3)
        func json(_ part: String) throws -> [String: Any] {
            let bytes = try #require(Base64.decode(part))
            return try #require(JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        }
        let header = try json(parts[0])
        #expect(header.keys.sorted() == ["alg", "typ"] && header["alg"] as? String == "RS256")
        let claims = try json(parts[1])
        #expect(claims.keys.sorted() == ["aud", "exp", "iss", "jti", "nbf", "sub"])
        #expect(claims["iss"] as? String == "client-9" && claims["sub"] as? String == "client-9")
        #expect(claims["aud"] as? String == "https://token.example/oauth")
        #expect(claims["nbf"] as? Int == 1_800_000_000 && claims["exp"] as? Int == 1_800_000_300)
        #expect(try #require(Base64.decode(parts[2])).count == 128, "an RS256 signature of the 1024-bit key")
    }
}
