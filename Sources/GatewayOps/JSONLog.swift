import EgressPosix
import Logging

/// Minimal JSON text helpers (logs, /tunnels); enough for strings, numbers and flat objects.
public enum JSON {
    /// A JSON string literal for `value`, with control characters escaped.
    public static func quote(_ value: String) -> String {
        // Fast path: nothing to escape (addresses, names, reasons: nearly every value).
        if value.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x22 && $0 != 0x5c }) { return "\"" + value + "\"" }
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// RFC 3339 UTC time with milliseconds, from nanoseconds since the epoch.
    public static func timestamp(epochNanoseconds: UInt64) -> String {
        let totalSeconds = Int64(epochNanoseconds / 1_000_000_000)
        let millis = Int(epochNanoseconds / 1_000_000 % 1000)
        let days = totalSeconds / 86_400
        let secondOfDay = Int(totalSeconds % 86_400)
        // Civil-from-days (Howard Hinnant's algorithm, public domain).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(Int64(secondOfDay / 3600), 2)):"
            + "\(pad(Int64(secondOfDay / 60 % 60), 2)):\(pad(Int64(secondOfDay % 60), 2)).\(pad(Int64(millis), 3))Z"
    }
}

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
        text = "{\"ts\":" + JSON.quote(JSON.timestamp(epochNanoseconds: Posix.wallClockNanoseconds()))
        text.reserveCapacity(512)
        text += ",\"level\":\"" + level + "\",\"msg\":" + JSON.quote(message) + ",\"logger\":" + JSON.quote(logger)
    }

    public mutating func add(_ key: String, _ value: String) {
        text += ",\"" + key + "\":" + JSON.quote(value)
    }

    public mutating func add<Number: BinaryInteger>(_ key: String, _ value: Number) {
        text += ",\"" + key + "\":" + String(value)
    }

    /// Writes the line to stderr (one write, so concurrent lines never interleave).
    public func emit() {
        var line = text
        line += "}\n"
        line.withUTF8 { Posix.writeStderr($0) }
    }
}
