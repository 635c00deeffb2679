import Foundation
import Logging
import OutboundPool

extension Event {
    /// The longest message written: the API server accepts more, but an Event is read in
    /// `kubectl describe`, and a tenant-influenced string must not grow it without bound.
    public static let messageLimit = 1024

    /// An Event about `involved` from `component`, counted once, stamped `now`.
    public static func about(_ involved: InvolvedObject, name: String, reason: String, message: String, type: String = "Warning",
                             component: String, now: Date) -> Event {
        let stamp = ISO8601DateFormatter().string(from: now)
        return Event(metadata: ObjectMeta(name: name, namespace: involved.namespace), involvedObject: involved, reason: reason,
                     message: String(message.prefix(messageLimit)), type: type, count: 1, firstTimestamp: stamp,
                     lastTimestamp: stamp, source: Source(component: component))
    }
}

/// Writes Events about one object (a controller's primary object, for `kubectl describe`).
/// The same reason and message within `window` is one Event whose `count` grows (as
/// client-go's correlator does), and its count is written at most once per `countInterval`,
/// so callers report every failure and a failure repeated every 5 s costs one write a minute.
/// An actor: callers on many tasks share one series table; writes are awaited in order, and
/// a failed write is logged and dropped (an Event is never worth blocking or failing work).
public actor EventRecorder {
    /// One Event already written: its name, its count so far, and when it was last reported
    /// and last written (monotonic).
    private struct Series {
        var name: String
        var count: Int
        var last: Duration
        var lastWrite: Duration
    }

    private let client: KubeClient
    private let component: String
    private let clock: any ControllerClock
    private let logger: Logger
    private let window: Duration
    private let countInterval: Duration
    private var involved: Event.InvolvedObject
    private var series: [String: Series] = [:]
    private var serial: UInt64 = 0

    public init(client: KubeClient, component: String, involved: Event.InvolvedObject, clock: any ControllerClock,
                logger: Logger, window: Duration = .seconds(600), countInterval: Duration = .seconds(60)) {
        self.client = client
        self.component = component
        self.involved = involved
        self.clock = clock
        self.logger = logger
        self.window = window
        self.countInterval = countInterval
    }

    /// The object's uid, once known (Events name it so they vanish with the object).
    public func setUID(_ uid: String?) { involved.uid = uid }

    public func warning(_ reason: String, _ message: String) async { await record(reason: reason, message: message, type: "Warning") }

    public func record(reason: String, message: String, type: String) async {
        let now = clock.now()
        series = series.filter { now - $0.value.last < window }
        let key = "\(type)\u{0}\(reason)\u{0}\(message)"
        let namespace = involved.namespace
        if var known = series[key] {
            known.count += 1
            known.last = now
            let due = now - known.lastWrite >= countInterval
            if due { known.lastWrite = now }
            series[key] = known
            guard due else { return }
            let stamp = ISO8601DateFormatter().string(from: clock.wallNow())
            do {
                _ = try await client.mergePatch(Event.resource.path(namespace: namespace, name: known.name),
                                                ["count": known.count, "lastTimestamp": stamp])
                return
            } catch let error as OutboundError where error.kind == .http(404) {
                // Expired at the API server (its event TTL): write a fresh one below.
            } catch {
                logger.warning("event write failed", metadata: ["reason": .string(reason), "error": .string("\(error)")])
                return
            }
        }
        serial += 1
        let wall = clock.wallNow()
        // Unique per recorder and time, as client-go names them: `<object>.<hex nanoseconds>`.
        let suffix = String(UInt64(max(0, wall.timeIntervalSince1970) * 1_000_000) &* 1000 &+ serial % 1000, radix: 16)
        let name = "\(involved.name ?? component).\(suffix)"
        let event = Event.about(involved, name: name, reason: reason, message: message, type: type, component: component, now: wall)
        do {
            _ = try await client.create(Event.resource.path(namespace: namespace), try KubeClient.json(event))
            series[key] = Series(name: name, count: 1, last: now, lastWrite: now)
            logger.info("event", metadata: ["reason": .string(reason), "type": .string(type)])
        } catch {
            logger.warning("event write failed", metadata: ["reason": .string(reason), "error": .string("\(error)")])
        }
    }
}
