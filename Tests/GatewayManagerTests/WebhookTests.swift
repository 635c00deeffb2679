import EgressLoop
import Foundation
import Testing

@testable import GatewayManager

/// The webhook router's decisions (issue 18, item 1) with no server: signatures, the order of
/// the checks, replays on a hand-driven clock, and routing by host, organisation and labels.
@Suite struct WebhookTests {
    let secrets: [String: [UInt8]] = ["github.com": Array("cloud-secret".utf8), "ghes.example.com": Array("ghes-secret".utf8)]
    let start = Instant(nanoseconds: 1_000_000_000)
    let targets = [
        Webhook.Target(namespace: "team-a", gateway: "gw-a", host: "github.com", organization: "Acme",
                       groups: [("cpu", ["cpu", "linux"]), ("gpu", ["gpu", "linux", "cuda"])]),
        Webhook.Target(namespace: "team-b", gateway: "gw-b", host: "ghes.example.com", organization: "acme",
                       groups: [("cpu", ["cpu", "linux"])]),
    ]

    func sign(_ body: [UInt8], _ secret: String) -> String {
        "sha256=" + Webhook.Signature.hmac(body, key: Array(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    func job(action: String = "queued", org: String = "acme", labels: [String] = ["self-hosted", "linux", "cpu"]) -> [UInt8] {
        let payload: [String: Any] = [
            "action": action,
            "workflow_job": ["id": 4242, "run_id": 77, "labels": labels, "created_at": "2026-12-07T10:00:00Z", "name": "build"],
            "organization": ["login": org], "repository": ["full_name": "\(org)/widgets", "owner": ["login": org]],
        ]
        return Array((try? JSONSerialization.data(withJSONObject: payload)) ?? Data())
    }

    func delivery(_ body: [UInt8], host: String? = nil, event: String = "workflow_job", id: String = "d-1",
                  secret: String = "cloud-secret", signature: String? = nil) -> Webhook.Delivery {
        Webhook.Delivery(enterpriseHost: host, event: event, deliveryID: id, signature: signature ?? sign(body, secret), body: body)
    }

    func decide(_ delivery: Webhook.Delivery, _ replays: inout Webhook.ReplayGuard, at now: Instant? = nil) -> Webhook.Outcome {
        Webhook.decide(delivery, secrets: secrets, replays: &replays, now: now ?? start, targets: targets)
    }

    @Test func hmacMatchesTheKnownVectors() {
        // RFC 4231, test case 1.
        let rfc = Webhook.Signature.hmac(Array("Hi There".utf8), key: Array(repeating: 0x0b, count: 20))
        #expect(rfc.map { String(format: "%02x", $0) }.joined() == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        // GitHub's documented example for X-Hub-Signature-256.
        #expect(Webhook.Signature.verify(body: Array("Hello, World!".utf8),
                                         header: "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                                         secret: Array("It's a Secret to Everybody".utf8)))
    }

    @Test func wrongMissingOrTruncatedSignaturesFail() {
        let body = job()
        let good = sign(body, "cloud-secret")
        let secret = Array("cloud-secret".utf8)
        #expect(Webhook.Signature.verify(body: body, header: good, secret: secret))
        #expect(Webhook.Signature.verify(body: body, header: good.uppercased().replacingOccurrences(of: "SHA256=", with: "sha256="), secret: secret))
        for bad in [nil, "", "sha256=", String(good.dropLast()), good + "0", "sha1=" + good.dropFirst(7), sign(body, "other"),
                    String(good.dropLast()) + (good.last == "0" ? "1" : "0"), "sha256=" + String(repeating: "zz", count: 32)] {
            #expect(!Webhook.Signature.verify(body: body, header: bad, secret: secret), "\(bad ?? "nil")")
        }
        #expect(!Webhook.Signature.verify(body: body + [0x20], header: good, secret: secret), "a body changed after signing")
        #expect(!Webhook.Signature.verify(body: body, header: good, secret: []), "no secret verifies nothing")
    }

    @Test func cloudAndEnterpriseJobsRouteToTheirOwnGateways() {
        var replays = Webhook.ReplayGuard()
        #expect(decide(delivery(job()), &replays) == .routed(.init(namespace: "team-a", gateway: "gw-a", runnerGroup: "cpu", jobID: 4242,
                                                                   runID: 77, queuedAt: "2026-12-07T10:00:00Z",
                                                                   repository: "acme/widgets", jobName: "build")))
        let ghes = delivery(job(), host: "GHES.example.com", id: "d-2", secret: "ghes-secret")
        #expect(decide(ghes, &replays) == .routed(.init(namespace: "team-b", gateway: "gw-b", runnerGroup: "cpu", jobID: 4242, runID: 77,
                                                         queuedAt: "2026-12-07T10:00:00Z", repository: "acme/widgets", jobName: "build")))
        #expect(decide(delivery(job(labels: ["self-hosted", "gpu", "cuda"]), id: "d-3"), &replays).label == "routed")
        #expect(decide(delivery(job(labels: ["self-hosted", "gpu", "rocm"]), id: "d-4"), &replays) == .unrouted, "no group has every label")
        #expect(decide(delivery(job(org: "other"), id: "d-5"), &replays) == .unrouted, "another organisation's job")
        #expect(decide(delivery(job(labels: ["self-hosted"]), id: "d-6"), &replays) == .unrouted, "only self-hosted names no group")
    }

    @Test func theChecksRunInOrderAndNothingUnverifiedIsParsedOrRemembered() {
        var replays = Webhook.ReplayGuard()
        let huge = Array(repeating: UInt8(0x20), count: Webhook.maxBodyBytes + 1)
        #expect(decide(delivery(huge, signature: "sha256=00"), &replays) == .tooLarge, "size first: 413 before any hashing")
        #expect(decide(delivery(job(), host: "unknown.example.com"), &replays) == .unknownHost)
        #expect(decide(delivery(job(), secret: "wrong"), &replays) == .badSignature)
        #expect(replays.count == 0, "a forged delivery is not remembered (it cannot fill the replay guard)")
        #expect(decide(delivery(Array("{not json".utf8)), &replays) == .malformed("workflow_job payload"), "parsed only once verified")
        #expect(decide(delivery(job(), id: ""), &replays) == .malformed("no X-GitHub-Delivery"))
        #expect(decide(delivery(Array("{}".utf8), event: "ping", id: "p-1"), &replays) == .pong)
        #expect(decide(delivery(Array("{}".utf8), event: "push", id: "p-2"), &replays) == .ignored("event push"))
        #expect(decide(delivery(job(action: "completed"), id: "p-3"), &replays) == .ignored("action completed"))
        #expect([Webhook.Outcome.tooLarge, .unknownHost, .badSignature, .malformed("x"), .replayed].map(\.status) == [413, 401, 401, 400, 409])
    }

    @Test func aDeliveryIsAReplayForTenMinutesAndNotAfter() {
        var replays = Webhook.ReplayGuard()
        let first = delivery(job(), id: "same")
        #expect(decide(first, &replays).label == "routed")
        #expect(decide(first, &replays, at: start + .seconds(599)) == .replayed)
        #expect(decide(first, &replays, at: start + .seconds(600)).label == "routed", "outside the window: a new delivery")
    }

    @Test func theReplayGuardIsBounded() {
        var replays = Webhook.ReplayGuard(capacity: 100)
        var admitted = 0
        for index in 0..<1_000 where replays.admit("id-\(index)", now: start) { admitted += 1 }
        #expect(admitted == 1_000 && replays.count == 100)
        let newest = replays.admit("id-999", now: start)
        let oldest = replays.admit("id-0", now: start)
        #expect(!newest && oldest, "the oldest are forgotten first")
    }

    @Test func mutatedPayloadsNeverCrashTheParserOrRouteWrongly() {
        // Fuzz-style: a valid payload with bytes flipped, cut or repeated, signed after the change
        // (as an attacker holding no secret cannot do, but a buggy sender can).
        var generator = SystemRandomNumberGenerator()
        let base = job()
        var replays = Webhook.ReplayGuard()
        for round in 0..<2_000 {
            var body = base
            switch round % 4 {
            case 0: body[Int.random(in: 0..<body.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            case 1: body = Array(body.prefix(Int.random(in: 0..<body.count, using: &generator)))
            case 2: body.insert(contentsOf: body.prefix(8), at: Int.random(in: 0..<body.count, using: &generator))
            default: body = (0..<Int.random(in: 0..<64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            let outcome = decide(delivery(body, id: "f-\(round)"), &replays)
            switch outcome {
            case .malformed, .ignored, .unrouted: break
            case .routed(let route): #expect(route.gateway == "gw-a", "only the gateway the (still valid) payload names")
            default: Issue.record("unexpected \(outcome) for a signed delivery")
            }
        }
    }
}
