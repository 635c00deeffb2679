import Foundation
import GatewayManager
import GitHubKit
import KubeKit
import Logging
import Testing

@testable import ActionsGatewayController

/// Runner groups' `allowedTeams` (issue 18, item 2) on a manual clock, against the fake GitHub
/// (teams, runs' actors, cancels, faults) and the fake API server (Events). Assertions read
/// what the fakes saw: GitHub's call log and cancels, the API server's Events.
@Suite(.serialized) struct TeamGateTests {
    typealias World = RecoveryLoopTests.World

    static func group(teams: [String] = ["acme/builders", "acme/release"], failOpen: Bool = false) -> DefaultedGateway.Group {
        var group = DefaultedGateway.Group(name: "cpu", runnerLabels: ["cpu"], maxListeners: 1, maxWorkers: 5, tiers: [], maxEvictionRetries: 0,
                                           completedPodTTLSeconds: 0, podPriorityClassName: nil)
        group.allowedTeams = teams.compactMap(TeamRef.init)
        group.allowedTeamsFailOpen = failOpen
        return group
    }

    /// A gate over the world's fakes and clock.
    static func gate(_ world: World) async -> TeamGate {
        let events = EventRecorder(client: world.client, component: "agc", involved: .init(
            apiVersion: "actions-gateway.github.com/v1alpha1", kind: "ActionsGateway", name: "gw", namespace: "team-a", uid: nil),
                                   clock: world.clock, logger: .init(label: "test"))
        let gate = TeamGate(metrics: world.metrics, events: events, clock: world.clock, logger: .init(label: "test"))
        let (pool, base, tokens) = (world.pool, world.github.url + "/api/v3", world.tokens)
        await gate.setLookups { _ in
            let runs = RunsClient(apiBase: base, tokens: tokens, pool: pool)
            return TeamGate.Lookups(actor: { await runs.triggeringActor(repository: $0, runID: $1) },
                                    membership: { await runs.membership(organization: $0.organization, slug: $0.slug, user: $1) },
                                    cancel: { await runs.cancel(repository: $0, runID: $1) })
        }
        return gate
    }

    static func calls(_ world: World, _ endpoint: String) async throws -> Int {
        let calls = try await world.control("state")["calls"] as? [[String: Any]] ?? []
        return calls.filter { $0["endpoint"] as? String == endpoint }.count
    }

    static func cancels(_ world: World) async throws -> [String] {
        (try await world.control("state")["cancels"] as? [[String: Any]] ?? []).compactMap { $0["runId"] as? String }
    }

    @Test func aMemberRunsAndTheAnswerIsCachedForFiveMinutes() async throws {
        let world = try await World()
        let gate = await Self.gate(world)
        _ = try await world.control("teams", ["acme/release": ["alice": "active"]])
        _ = try await world.control("actor", ["runId": 41, "login": "alice"])
        let admit = { await gate.admit(group: Self.group(), jobID: "j", repository: "acme/widgets", runID: 41, waitingSince: world.clock.now()) }
        #expect(await admit() == .run, "a member of the second team")
        #expect(try await Self.calls(world, "run") == 1)
        #expect(try await Self.calls(world, "team_membership") == 2, "builders (no), then release (yes)")
        world.clock.advance(by: .seconds(299))
        #expect(await admit() == .run)
        let (membershipsCached, runsCached) = (try await Self.calls(world, "team_membership"), try await Self.calls(world, "run"))
        #expect(membershipsCached == 2 && runsCached == 1, "inside 5 minutes: no API call")
        world.clock.advance(by: .seconds(1))
        #expect(await admit() == .run)
        let (memberships, runs) = (try await Self.calls(world, "team_membership"), try await Self.calls(world, "run"))
        #expect(memberships == 4 && runs == 2, "after 5 minutes: asked again")
        #expect(try await Self.cancels(world).isEmpty)
    }

    @Test func aNonMemberIsDeniedItsRunCancelledOnceWithAnEvent() async throws {
        let world = try await World()
        let gate = await Self.gate(world)
        _ = try await world.control("teams", ["acme/builders": ["bob": "pending"]])
        _ = try await world.control("actor", ["runId": 42, "login": "bob"])
        let admit = { (job: String) in
            await gate.admit(group: Self.group(), jobID: job, repository: "acme/widgets", runID: 42, waitingSince: world.clock.now())
        }
        #expect(await admit("j1") == .denied, "a pending membership is not an active one")
        #expect(await admit("j2") == .denied, "the run's other job")
        #expect(try await Self.cancels(world) == ["42"], "the run cancelled once")
        #expect(try await world.warnings("JobDenied") == 1)
        let events = try await world.client.list("/api/v1/namespaces/team-a/events")
        let message = events.compactMap { $0["message"] as? String }.first { $0.contains("denied") } ?? ""
        #expect(message.contains("bob") && message.contains("cpu") && message.contains("acme/builders,acme/release"), "\(message)")
        #expect(world.metrics.value("agc_jobs_denied_total", ["cpu", "not_member"]) == 1)
        #expect(world.metrics.value("agc_jobs_denied_total", ["cpu", "run_denied"]) == 1)
        // The negative answer is cached too: another of bob's runs asks no team again.
        _ = try await world.control("actor", ["runId": 43, "login": "bob"])
        let before = try await Self.calls(world, "team_membership")
        #expect(await gate.admit(group: Self.group(), jobID: "j3", repository: "acme/widgets", runID: 43, waitingSince: world.clock.now()) == .denied)
        #expect(try await Self.calls(world, "team_membership") == before)
    }

    @Test func whenGitHubCannotSayTheJobWaitsThenIsDeniedUnlessTheGroupFailsOpen() async throws {
        let world = try await World()
        let gate = await Self.gate(world)
        _ = try await world.control("teams", ["acme/builders": ["carol": "active"]])
        _ = try await world.control("actor", ["runId": 44, "login": "carol"])
        _ = try await world.control("fault", ["endpoint": "team_membership", "status": 502, "count": 100])
        let since = world.clock.now()
        let closed = Self.group(teams: ["acme/builders"])
        if case .hold = await gate.admit(group: closed, jobID: "j", repository: "acme/widgets", runID: 44, waitingSince: since) {} else {
            Issue.record("fail-closed by default: the job waits")
        }
        #expect(try await Self.cancels(world).isEmpty, "no cancel on a guess")
        #expect(await gate.admit(group: Self.group(teams: ["acme/builders"], failOpen: true), jobID: "j", repository: "acme/widgets",
                                 runID: 44, waitingSince: since) == .run, "allowedTeamsOnError: allow")
        world.clock.advance(by: TeamGate.unavailableDeadline)
        #expect(await gate.admit(group: closed, jobID: "j", repository: "acme/widgets", runID: 44, waitingSince: since) == .denied)
        #expect(try await Self.cancels(world) == ["44"])
        #expect(world.metrics.value("agc_jobs_denied_total", ["cpu", "verification_unavailable"]) == 1)
        #expect(world.metrics.value("agc_team_checks_unavailable_total", ["cpu"]) == 3)
    }

    @Test func aGroupWithoutTeamsAsksNothingAndAJobWithoutARunIsDenied() async throws {
        let world = try await World()
        let gate = await Self.gate(world)
        #expect(await gate.admit(group: Self.group(teams: []), jobID: "j", repository: nil, runID: nil, waitingSince: .zero) == .run)
        #expect(try await Self.calls(world, "run") == 0)
        #expect(await gate.admit(group: Self.group(), jobID: "j", repository: nil, runID: nil, waitingSince: .zero) == .denied)
        #expect(world.metrics.value("agc_jobs_denied_total", ["cpu", "unknown_actor"]) == 1)
    }

    @Test func theCacheIsBoundedAndExpires() {
        var cache = TeamCache()
        let team = TeamRef(organization: "acme", slug: "builders")
        for index in 0..<(TeamCache.capacity + 10) {
            cache.remember("user\(index)", of: team, member: true, now: .seconds(Int64(index) / 1000))
        }
        #expect(cache.count == TeamCache.capacity)
        #expect(cache.member("user0", of: team, now: .seconds(20)) == nil, "the oldest went first")
        #expect(cache.member("USER\(TeamCache.capacity + 9)", of: team, now: .seconds(20)) == true, "logins compare without case")
        cache.remember(actor: nil, repository: "acme/widgets", runID: 1, now: .seconds(20))
        #expect(cache.actor(repository: "acme/widgets", runID: 1, now: .seconds(21)) == .some(nil), "a remembered nobody")
        #expect(cache.actor(repository: "acme/widgets", runID: 1, now: .seconds(20) + TeamCache.ttl) == nil, "expired")
    }
}
