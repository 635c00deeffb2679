import GatewayOps

/// How the process's descriptors (RLIMIT_NOFILE) are shared out, decided once at start.
///
/// Why: when a proxy runs out of descriptors, the admin endpoint cannot accept either, the
/// liveness probe fails, and Kubernetes restarts the pod, cutting every tunnel. So every
/// descriptor use is bounded by construction: a fixed reserve for the process itself and the
/// admin endpoint, two sockets per tunnel, and splice pipes (two descriptors each) capped per
/// loop; a tunnel that cannot get a pipe relays through buffers instead. `maxTunnels` from the
/// config is lowered to what fits, so a refusal is a clean 503, never EMFILE.
///
/// A tunnel counts as 4: client, upstream and, on average, one pipe. (A tunnel streaming
/// both ways at once can hold two pipes; the per-loop pipe cap is what keeps that bounded.)
public struct DescriptorBudget: Sendable, Equatable {
    /// The admin loop, signalfd, inotify, log files and standard streams (about 12 when
    /// measured idle, doubled), and the resolver's threads (two sockets each while a lookup runs).
    public static let processReserve = 32 + 2 * ProxyShared.resolverLimits.threads
    /// Descriptors kept for the admin endpoint's connections (its connection cap).
    public static let adminReserve = AdminServer.maxConnections
    public static let perTunnel = 4
    /// Per loop: its epoll, eventfd, timerfd, spare descriptor and listener.
    public static let perLoop = 5

    /// Tunnels the descriptors allow; the cap in force is the smaller of this and the config's
    /// `maxTunnels` (which a reload can change; the descriptor limit cannot change).
    public let tunnelsThatFit: Int
    /// Pipes (in use plus pooled) each loop may hold.
    public let pipesPerLoop: Int
    /// Event loops the process runs (fixed at start, like the limit).
    public let loops: Int

    public init(descriptorLimit: Int, loops: Int) {
        self.loops = max(1, loops)
        let usable = max(0, descriptorLimit - Self.processReserve - Self.adminReserve - Self.perLoop * max(1, loops))
        tunnelsThatFit = max(1, usable / Self.perTunnel)
        // Half of each tunnel's share is pipe descriptors: one pipe per tunnel in the process.
        pipesPerLoop = tunnelsThatFit / max(1, loops)
    }

    public func maxTunnels(configured: Int) -> Int { min(configured, tunnelsThatFit) }
}

/// Caps on connections that have not sent a complete request head yet (so are not
/// authenticated): overall and per client address, per loop.
///
/// Why: such connections hold a `maxTunnels` slot, so without a cap of their own, slow or
/// silent clients could take every slot before anyone authenticates. Past a cap the loop drops
/// the *oldest* such connection (from that source, or overall) to admit the new one, rather
/// than refusing the newcomer: a real client sends its head within milliseconds of connecting,
/// so the oldest waiting connection is the one least likely to be real. Only connections
/// waiting longer than `grace` are dropped: a burst of real clients is accepted faster than
/// their heads are read, and none of them may be mistaken for a slow one. The same rule frees
/// a `maxTunnels` slot for a newcomer when every slot is taken.
public struct PendingLimits: Sendable, Equatable {
    public static let grace: Duration = .seconds(1)
    public let perLoop: Int
    public let perSourcePerLoop: Int

    /// A quarter of the tunnel cap may be waiting for a head (at least 16), and a single client
    /// address at most 64 of those (or half of them when that is fewer, at least 8).
    public init(maxTunnels: Int, loops: Int) {
        let overall = max(16, maxTunnels / 4)
        let perSource = max(8, min(64, overall / 2))
        let loops = max(1, loops)
        perLoop = max(1, (overall + loops - 1) / loops)
        perSourcePerLoop = max(1, (perSource + loops - 1) / loops)
    }
}
