import EgressLoop
import Foundation
import KubeKit
import Testing

@testable import GatewayManager

/// The GMC-to-AGC wake (issue 18, item 1) with no server: the Ed25519 keys against openssl's
/// own answers, the AGC's checks in order, and what the GMC renders when wakes are on.
@Suite struct AGCWakeTests {
    /// A test-only key (`openssl genpkey -algorithm ed25519`); its public half and the signature
    /// of "wake me" below are what openssl itself printed for it (`openssl pkey -pubout`,
    /// `openssl pkeyutl -sign -rawin`): Ed25519 is deterministic, so ours must equal them.
    static let pem = Array("""
        -----BEGIN PRIVATE KEY-----
        MC4CAQAwBQYDK2VwBCIEICjbRNHrR/GuJI9cAwiTZNVCmJmV7y1YEXrtswrME5Za
        -----END PRIVATE KEY-----

        """.utf8)
    static let publicBase64 = "+Sg8bxQ4TyBme+QaD/HXkKLIJg0PweyapIRUUBHuS5A="
    static let opensslSignature = "ky6LrpOO41lidhydGoeOs85N7ehJApRdWuruokVGjKw4ePZTMwpXVTT22leyCw2TTfdnQUN+PGz4337Ae1t0Bg=="

    let key: WakeSigningKey
    let verify: WakeVerifyKey
    let now = Instant(nanoseconds: 5_000_000_000)
    let epoch: Int64 = 1_796_000_000

    init() throws {
        key = try WakeSigningKey(pem: Self.pem)
        verify = try #require(WakeVerifyKey(raw: key.publicKey))
    }

    func request(gateway: String = "gw", issuedAt: Int64? = nil, nonce: String = "d-1/4242", jobs: Int = 1) -> AGCWake.Request {
        let job = AGCWake.Job(runnerGroup: "cpu", jobID: 4242, runID: 77, repository: "acme/widgets", jobName: "build", queuedAt: epoch - 600)
        return AGCWake.Request(namespace: "team-a", gateway: gateway, issuedAt: issuedAt ?? epoch, nonce: nonce,
                               jobs: Array(repeating: job, count: jobs))
    }

    func signed(_ body: [UInt8]) -> String { AGCWake.signatureHeaderValue(key.sign(body) ?? []) }

    func check(_ body: [UInt8], signature: String?, _ replays: inout Webhook.ReplayGuard, epoch: Int64? = nil) -> AGCWake.Verdict {
        AGCWake.check(body: body, signature: signature, key: verify, namespace: "team-a", gateway: "gw", epochSeconds: epoch ?? self.epoch,
                      replays: &replays, now: now)
    }

    @Test func keysAgreeWithOpenssl() throws {
        #expect(Data(key.publicKey).base64EncodedString() == Self.publicBase64)
        let signature = try #require(key.sign(Array("wake me".utf8)))
        #expect(Data(signature).base64EncodedString() == Self.opensslSignature)
        let fromFlag = try #require(WakeVerifyKey(base64: Self.publicBase64))
        #expect(fromFlag.verify(Array("wake me".utf8), signature: signature))
        #expect(!fromFlag.verify(Array("wake me!".utf8), signature: signature), "another message")
        var flipped = signature
        flipped[10] ^= 1
        #expect(!fromFlag.verify(Array("wake me".utf8), signature: flipped), "a changed signature")
        #expect(!fromFlag.verify(Array("wake me".utf8), signature: Array(signature.prefix(63))), "a short signature")
        #expect(WakeVerifyKey(base64: "AAAA") == nil && WakeVerifyKey(base64: "not base64!") == nil, "not 32 bytes")
        #expect(throws: WakeSigningKey.LoadError.self) { try WakeSigningKey(pem: Array("-----BEGIN PRIVATE KEY-----\nAAAA\n".utf8)) }
    }

    @Test func aSignedWakeForThisGatewayIsAcceptedOnce() {
        var replays = Webhook.ReplayGuard()
        let body = AGCWake.body(request())
        #expect(check(body, signature: signed(body), &replays) == .accepted(request()))
        #expect(check(body, signature: signed(body), &replays) == .replayed, "the same nonce again")
        let next = AGCWake.body(request(nonce: "d-2/4242"))
        #expect(check(next, signature: signed(next), &replays).label == "accepted", "a new nonce")
    }

    @Test func theChecksRunInOrderAndNothingUnverifiedIsRemembered() {
        var replays = Webhook.ReplayGuard()
        let body = AGCWake.body(request())
        let huge = Array(repeating: UInt8(0x20), count: AGCWake.maxBodyBytes + 1)
        #expect(check(huge, signature: signed(huge), &replays) == .tooLarge)
        #expect(check(body, signature: nil, &replays) == .badSignature)
        #expect(check(body, signature: "sha256=00", &replays) == .badSignature, "another scheme")
        #expect(check(body, signature: "ed25519=!!", &replays) == .badSignature, "not base64")
        #expect(check(body + [0x20], signature: signed(body), &replays) == .badSignature, "a body changed after signing")
        let other = try? WakeSigningKey(pem: Array("""
            -----BEGIN PRIVATE KEY-----
            MC4CAQAwBQYDK2VwBCIEIADZQji+gM9O578tg1f9rNyzuDPxsO3O0XOfAdAL+ClF
            -----END PRIVATE KEY-----

            """.utf8))
        #expect(check(body, signature: AGCWake.signatureHeaderValue(other?.sign(body) ?? []), &replays) == .badSignature, "another GMC's key")
        #expect(replays.count == 0, "no unverified nonce was remembered")
        let garbage = Array("{not json".utf8)
        #expect(check(garbage, signature: signed(garbage), &replays).label == "malformed")
        let elsewhere = AGCWake.body(request(gateway: "gw-b"))
        #expect(check(elsewhere, signature: signed(elsewhere), &replays) == .wrongGateway, "signed for another gateway")
        let old = AGCWake.body(request(issuedAt: epoch - AGCWake.maxSkewSeconds - 1))
        #expect(check(old, signature: signed(old), &replays) == .stale)
        let ahead = AGCWake.body(request(issuedAt: epoch + AGCWake.maxSkewSeconds + 1))
        #expect(check(ahead, signature: signed(ahead), &replays) == .stale)
        let empty = AGCWake.body(request(nonce: "n-empty", jobs: 0))
        #expect(check(empty, signature: signed(empty), &replays).label == "malformed", "a wake of no job")
        let many = AGCWake.body(request(nonce: "n-many", jobs: AGCWake.maxJobs + 1))
        #expect(check(many, signature: signed(many), &replays).label == "malformed", "more jobs than a wake may carry")
        let full = AGCWake.body(request(nonce: "n-full", jobs: AGCWake.maxJobs))
        #expect(full.count < AGCWake.maxBodyBytes / 2, "a full wake fits its body bound with room")
        #expect(check(full, signature: signed(full), &replays).label == "accepted")
        let edge = AGCWake.body(request(issuedAt: epoch - AGCWake.maxSkewSeconds))
        #expect(check(edge, signature: signed(edge), &replays).label == "accepted", "exactly at the skew bound")
        let statuses = [AGCWake.Verdict.tooLarge, .badSignature, .malformed(""), .wrongGateway, .stale, .replayed].map(\.status)
        #expect(statuses == [413, 401, 400, 403, 401, 409])
    }

    @Test func theGMCsRequestCarriesTheRouteAndGitHubsTime() {
        let route = Webhook.Route(namespace: "team-a", gateway: "gw", runnerGroup: "cpu", jobID: 4242, runID: 77,
                                  queuedAt: "2026-12-07T10:00:00Z", repository: "acme/widgets", jobName: "build (linux, 1)")
        let made = AGCWaker.job(route)
        #expect(made.queuedAt == 1_796_637_600 && made.jobID == 4242 && made.runnerGroup == "cpu")
        #expect(made.jobName == "build (linux, 1)" && made.repository == "acme/widgets" && made.runID == 77)
        #expect(AGCWake.epochSeconds("2026-12-07T10:00:00.250Z") == 1_796_637_600, "fractional seconds")
        #expect(AGCWake.epochSeconds("yesterday") == nil)
        let wake = AGCWake.Request(namespace: "team-a", gateway: "gw", issuedAt: epoch, nonce: "n", jobs: [made])
        #expect(AGCWake.body(wake) == AGCWake.body(wake), "the same request signs the same bytes")
    }

    @Test func urlTemplatesAreChecked() {
        #expect(AGCWaker.validate(template: AGCWaker.defaultURLTemplate) == nil)
        #expect(AGCWaker.url(AGCWaker.defaultURLTemplate, namespace: "team-a", gateway: "gw") == "http://gw-agc.team-a.svc:8080")
        #expect(AGCWaker.validate(template: "http://127.0.0.1:8080") == nil, "one AGC for every wake")
        #expect(AGCWaker.validate(template: "http://{gateway}.{cluster}.svc") != nil, "an unknown placeholder")
        #expect(AGCWaker.validate(template: "ftp://{gateway}-agc") != nil)
        #expect(AGCWaker.validate(template: "http://{gateway}-agc/path") != nil)
        #expect(AGCWaker.validate(template: "http://{gateway}-agc?x=1") != nil)
    }

    @Test func wakesOnRenderTheKeyTheGMCsRuleAndTheService() throws {
        let off = try DesiredStateTests().render()
        let on = try DesiredStateTests().render(images: GatewayImages(wakePublicKey: verify, gmcNamespace: "gmc-system"))
        func agcArgs(_ objects: [KubeObject]) -> [String] {
            for case .deployment(let deployment) in objects where deployment.metadata.name == "team-a-gateway-agc" {
                return deployment.spec.template.spec.containers.first?.args ?? []
            }
            return []
        }
        func ingress(_ objects: [KubeObject]) -> [NetworkPolicy.Rule] {
            for case .networkPolicy(let policy) in objects where policy.metadata.name == "team-a-gateway-agc-ingress" { return policy.spec.ingress ?? [] }
            return []
        }
        #expect(!agcArgs(off).contains("--wake-public-key"))
        let args = agcArgs(on)
        let index = try #require(args.firstIndex(of: "--wake-public-key"))
        #expect(args[index + 1] == Self.publicBase64, "the public half, never the private key")
        #expect(ingress(off).count == 1)
        let fromGMC = try #require(ingress(on).last?.from?.first)
        #expect(ingress(on).count == 2)
        #expect(fromGMC.podSelector?.matchLabels == ["app.kubernetes.io/name": "gmc"])
        #expect(fromGMC.namespaceSelector?.matchLabels == ["kubernetes.io/metadata.name": "gmc-system"])
        for objects in [off, on] {
            let services = objects.compactMap { object -> Service? in if case .service(let s) = object, s.metadata.name == "team-a-gateway-agc" { return s }; return nil }
            #expect(services.count == 1 && services.first?.spec.ports.first?.port == DesiredState.agcAdminPort)
        }
        #expect(DesiredState.children.contains { $0.resource == .services && $0.suffix == "agc" }, "the Service is deleted with the gateway")
    }
}
