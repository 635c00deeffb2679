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

    public init(descriptorLimit: Int, loops: Int) {
        let usable = max(0, descriptorLimit - Self.processReserve - Self.adminReserve - Self.perLoop * max(1, loops))
        tunnelsThatFit = max(1, usable / Self.perTunnel)
        // Half of each tunnel's share is pipe descriptors: one pipe per tunnel in the process.
        pipesPerLoop = tunnelsThatFit / max(1, loops)
    }

    public func maxTunnels(configured: Int) -> Int { min(configured, tunnelsThatFit) }
}
