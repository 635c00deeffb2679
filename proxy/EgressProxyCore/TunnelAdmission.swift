import EgressLoop
import EgressPosix

/// Spec sections 2 to 4 for one request head, with no I/O: which tenant the client is, and
/// whether the request is refused, needs a lookup, or may be dialed. `Tunnel` performs what
/// it returns. The one effect is on the tenant's connect-rate bucket (a token taken), since
/// taking the token is the decision.
enum TunnelAdmission {
    /// An error reply: its status, its `result` label, and its reason (the audit `reason`,
    /// sent as X-Egress-Proxy-Error); `denied` when it counts as a policy denial.
    struct Refusal: Error, Equatable {
        var status: Int
        var result: TunnelResult
        var why: String
        var headers: [Header] = []
        var denied: DenyReason?

        /// A reply header beyond the standard ones (Retry-After, Proxy-Authenticate).
        struct Header: Equatable, Sendable {
            var name: String
            var value: String
        }

        static func deny(_ reason: DenyReason) -> Refusal {
            Refusal(status: 403, result: .denied, why: reason.rawValue, denied: reason)
        }

        var extraHeaders: [(String, String)] { headers.map { ($0.name, $0.value) } }
    }

    /// What to do with an admitted request's destination.
    enum Next: Equatable {
        /// A name: look it up off the loop, then `screen` the answers.
        case resolve(name: String, port: UInt16)
        /// An IP literal: `screen` it now.
        case screen([SocketAddress])
    }

    /// The verdict on a head. `tenant` is set once the client is known, refused or not, so a
    /// refusal after authentication is counted under its tenant.
    struct Decision {
        var tenant: PolicySnapshot.Tenant?
        var outcome: Result<Next, Refusal>
        /// For a `cidr` rule: the ranges the resolved addresses must fall into.
        var ranges: [CIDR]?
        /// Report mode: what enforce would have refused this request for.
        var reported: DenyReason?
    }

    static func decide(_ head: RequestHead, client: IPAddress, policy: PolicySnapshot, now: Instant) -> Decision {
        func refuse(_ refusal: Refusal, _ tenant: PolicySnapshot.Tenant? = nil) -> Decision {
            Decision(tenant: tenant, outcome: .failure(refusal))
        }
        let tenant: PolicySnapshot.Tenant
        switch policy.select(client: client, authorization: head.header("proxy-authorization")) {
        case .authFailed(let why):
            return refuse(Refusal(status: 407, result: .authFailed, why: why, headers: [.init(name: "Proxy-Authenticate", value: "Basic realm=\"egress\"")]))
        case .tenant(let chosen):
            tenant = chosen
        }
        guard tenant.config.enabled else { return refuse(.deny(.tenantDisabled), tenant) }
        if let retryAfter = tenant.runtime.takeToken(now: now) {
            let seconds = max(1, Int(retryAfter.seconds.rounded(.up)))
            return refuse(Refusal(status: 429, result: .rateLimited, why: "connect_rate", headers: [.init(name: "Retry-After", value: "\(seconds)")]), tenant)
        }
        if case .forward = head.kind {
            switch ForwardRequest.bodyLength(head) {
            case .failure(.lengthRequired): return refuse(Refusal(status: 411, result: .badRequest, why: "chunked_request_body"), tenant)
            case .failure: return refuse(Refusal(status: 400, result: .badRequest, why: "content_length"), tenant)
            case .success: break
            }
        }
        var decision = Decision(tenant: tenant, outcome: .success(.screen([])))
        switch tenant.config.allow.decide(head.authority) {
        case .denied(let why):
            guard tenant.config.mode == .report else { return refuse(.deny(why), tenant) }
            decision.reported = why
        case .allowed:
            break
        case .allowedIfResolvedInto(let cidrs):
            decision.ranges = cidrs
        }
        switch head.authority.host {
        case .ip(let ip): decision.outcome = .success(.screen([SocketAddress(ip: ip, port: head.authority.port)]))
        case .name(let name): decision.outcome = .success(.resolve(name: name, port: head.authority.port))
        }
        return decision
    }

    /// The destination's candidates the policy admits, which are exactly what is dialed (or,
    /// through a parent, what was checked). A `cidr` rule that no candidate falls into is
    /// let through in report mode, and reported; the deny ranges hold in both modes.
    static func screen(_ addresses: [SocketAddress], tenant: PolicySnapshot.Tenant, within ranges: [CIDR]?, policy: PolicySnapshot)
        -> Result<(addresses: [SocketAddress], reported: DenyReason?), Refusal>
    {
        var (kept, droppedPrivate) = policy.admissible(addresses, tenant: tenant, within: ranges)
        var reported: DenyReason?
        if kept.isEmpty, !droppedPrivate, ranges != nil, tenant.config.mode == .report {
            (kept, droppedPrivate) = policy.admissible(addresses, tenant: tenant, within: nil)
            if !kept.isEmpty { reported = .notAllowed }
        }
        guard !kept.isEmpty else { return .failure(.deny(droppedPrivate ? .privateAddress : .notAllowed)) }
        return .success((kept, reported))
    }
}

extension TunnelAdmission {
    /// What follows an admitted head, or a lookup's answers.
    enum Step {
        case refuse(Refusal, detail: String?)
        /// Look these names up off the loop, then call `afterLookup`.
        case lookup(DialTargets)
        /// Dial: the tenant slot is taken (the tunnel must release it), `reported` is what
        /// report mode let through on the destination's addresses.
        case dial(TunnelDialer, reported: DenyReason?)
    }

    /// Dials at once when every address is known (IP literals, direct or to an IP parent);
    /// otherwise asks for the lookup of the destination's and the parent's names in one job.
    static func route(_ next: Next, authority: Authority, tenant: PolicySnapshot.Tenant, within ranges: [CIDR]?,
                      policy: PolicySnapshot) -> Step {
        let targets = DialTargets(next, parent: tenant.config.parentProxy)
        guard let known = targets.known else { return .lookup(targets) }
        return dial(known.destination, parentAddresses: known.parent, authority: authority, tenant: tenant, within: ranges, policy: policy)
    }

    static func afterLookup(_ found: Result<[SocketAddress], Posix.ResolveError>, parent: Result<[SocketAddress], Posix.ResolveError>,
                            authority: Authority, tenant: PolicySnapshot.Tenant, within ranges: [CIDR]?, policy: PolicySnapshot) -> Step {
        switch (found, parent) {
        case (.failure(let error), _):
            return .refuse(.init(status: 502, result: .dnsFailed, why: "dns_failed"), detail: "\(error)")
        case (_, .failure(let error)):
            return .refuse(.init(status: 502, result: .dnsFailed, why: "parent_dns_failed"), detail: "\(error)")
        case (.success(let addresses), .success(let parentAddresses)):
            return dial(addresses, parentAddresses: parentAddresses, authority: authority, tenant: tenant, within: ranges, policy: policy)
        }
    }

    /// Screens the destination's candidates and takes one of the tenant's `maxTunnels` slots
    /// (last, so a refused tunnel never holds one): the dialer gets the admitted addresses,
    /// or the parent's when the tenant chains.
    private static func dial(_ addresses: [SocketAddress], parentAddresses: [SocketAddress], authority: Authority,
                             tenant: PolicySnapshot.Tenant, within ranges: [CIDR]?, policy: PolicySnapshot) -> Step {
        switch screen(addresses, tenant: tenant, within: ranges, policy: policy) {
        case .failure(let refusal):
            return .refuse(refusal, detail: nil)
        case .success(let screened):
            guard tenant.runtime.acquire(limit: tenant.config.maxTunnels) else {
                return .refuse(.init(status: 503, result: .overLimit, why: "tenant_max_tunnels"), detail: nil)
            }
            let dialer = TunnelDialer(addresses: screened.addresses, parent: tenant.config.parentProxy,
                                      parentAddresses: parentAddresses, destination: authority)
            return .dial(dialer, reported: screened.reported)
        }
    }
}
