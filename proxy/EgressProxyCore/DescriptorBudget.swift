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

/// How much of the cgroup's memory limit the relay's pooled buffers and splice pipes may
/// hold, decided once at start.
///
/// Why: in a pod with a memory limit, a burst of busy tunnels (each direction holds a 32 KiB
/// buffer or a pipe of up to 64 KiB of kernel memory, both charged to the pod) would otherwise
/// grow until the OOM killer ends the process and every tunnel with it. Half the limit is left
/// to what cannot be bounded here (the runtime, tunnel objects, kernel socket buffers) less a
/// fixed reserve; the rest is split between buffers and pipes, per loop. A loop at its buffer
/// cap answers new clients 503 (`memory_limit`); past the pipe cap a tunnel relays through
/// buffers instead. Without a limit, nothing is capped.
public struct MemoryBudget: Sendable, Equatable {
    /// The runtime, loop threads and the resolver's stacks, measured at about 30 MiB resident.
    public static let reserve = 48 << 20
    /// So a tiny limit still lets each loop relay a few tunnels.
    public static let minimumPerLoop = 8
    /// Pooled buffers each loop may have in use; Int.max = no limit.
    public let buffersPerLoop: Int
    /// Pipes each loop may hold (in use plus pooled); Int.max = no limit.
    public let pipesPerLoop: Int

    public init(memoryLimit: Int?, loops: Int, bufferSize: Int, pipeCapacity: Int) {
        guard let memoryLimit else {
            buffersPerLoop = .max
            pipesPerLoop = .max
            return
        }
        let share = max(0, memoryLimit / 2 - Self.reserve) / 2 / max(1, loops)
        buffersPerLoop = max(Self.minimumPerLoop, share / max(1, bufferSize))
        pipesPerLoop = max(Self.minimumPerLoop, share / max(1, pipeCapacity))
    }
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
