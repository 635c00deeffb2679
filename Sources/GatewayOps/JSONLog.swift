import EgressPosix
import Logging
import Vocabulary

/// swift-log backend: one JSON object per line on stderr with fixed keys `ts`, `level`,
/// `msg`, `logger`, then the metadata. Bootstrapped once, in the executable's main.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = "{\"ts\":" + JSON.quote(JSON.timestamp(epochNanoseconds: Posix.wallClockNanoseconds()))
        line += ",\"level\":" + JSON.quote(event.level.rawValue)
        line += ",\"msg\":" + JSON.quote(event.message.description)
        line += ",\"logger\":" + JSON.quote(label)
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for key in merged.keys.sorted() {
            guard let value = merged[key] else { continue }
            line += "," + JSON.quote(key) + ":" + Self.render(value)
        }
        line += "}\n"
        Posix.writeStderr(Array(line.utf8))
    }

    static func render(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return JSON.quote(text)
        case .stringConvertible(let convertible):
            if let number = convertible as? any BinaryInteger { return "\(number)" }
            if let number = convertible as? Double, number.isFinite { return "\(number)" }
            if let flag = convertible as? Bool { return flag ? "true" : "false" }
            return JSON.quote(convertible.description)
        case .array(let values): return "[" + values.map(render).joined(separator: ",") + "]"
        case .dictionary(let values):
            return "{" + values.keys.sorted().compactMap { key in values[key].map { JSON.quote(key) + ":" + render($0) } }
                .joined(separator: ",") + "}"
        }
    }
}

/// A log line in the JSONLogHandler format, built by hand for the per-tunnel audit record:
/// the hot path skips swift-log's metadata dictionary (hashing, boxing) and writes one line
/// with one write(2). Keys must be added in sorted order, as JSONLogHandler sorts them.
public struct JSONLine {
    private var text: String

    public init(level: String, message: String, logger: String) {
        // One buffer, reserved first, that every field is appended to (see `add`).
        text = ""
        text.reserveCapacity(512)
        text += "{\"ts\":"
        JSON.appendQuoted(JSON.timestamp(epochNanoseconds: Posix.wallClockNanoseconds()), to: &text)
        text += ",\"level\":"
        JSON.appendQuoted(level, to: &text)
        text += ",\"msg\":"
        JSON.appendQuoted(message, to: &text)
        text += ",\"logger\":"
        JSON.appendQuoted(logger, to: &text)
    }

    // Appended piece by piece: `",\"" + key + ...` would first build the whole field as a
    // temporary, which for any field over 15 bytes (a small string's inline limit) is one more
    // allocation per field, per tunnel.
    public mutating func add(_ key: String, _ value: String) {
        text += ",\""
        text += key
        text += "\":"
        JSON.appendQuoted(value, to: &text)
    }

    public mutating func add<Number: BinaryInteger>(_ key: String, _ value: Number) {
        text += ",\""
        text += key
        text += "\":"
        text += String(value)
    }

    /// Writes the line to stderr (one write, so concurrent lines never interleave). Closes the
    /// line in place rather than in a copy, which would be one more allocation per line.
    public mutating func emit() {
        text += "}\n"
        text.withUTF8 { Posix.writeStderr($0) }
    }
}
