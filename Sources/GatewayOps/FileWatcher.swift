import EgressLoop
import EgressPosix

/// Calls `onChange` (on its loop) shortly after anything changes in the directory holding a
/// file. Watching the directory rather than the file is what catches a Kubernetes ConfigMap
/// update, which replaces a symlink by rename instead of writing the file. Events are
/// debounced (`settle`), and the caller decides whether the content really changed.
public final class FileWatcher: LoopHandler, TimerTarget {
    private let inotify: Inotify
    private let loop: EventLoop
    private let settle: Duration
    private let onChange: () -> Void
    private var registration: Registration?
    private var pending: TimerHandle?

    /// Call on `loop`'s thread.
    public init(path: String, loop: EventLoop, settle: Duration = .milliseconds(200), onChange: @escaping () -> Void)
        throws(IOError)
    {
        inotify = try Inotify()
        self.loop = loop
        self.settle = settle
        self.onChange = onChange
        let directory = path.contains("/") ? String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) : "."
        try inotify.watchDirectory(directory.isEmpty ? "/" : directory)
        registration = try loop.register(inotify.descriptor, events: [.readable], handler: self)
    }

    public func handle(events: EpollEvents, tag: UInt32) {
        guard inotify.drain(), pending == nil else { return }
        pending = loop.schedule(after: settle, target: self)
    }

    public func timerFired(_ token: UInt64) {
        pending = nil
        onChange()
    }
}
