/// Writes the Prometheus text exposition format 0.0.4. Hand-written because the format is
/// small and our counters live in per-loop structs summed at scrape time; `promtool check
/// metrics` in the integration tests is the judge of its output.
public struct PrometheusWriter {
    /// The metric types of the exposition format's TYPE line.
    public enum Kind: String, Sendable { case counter, gauge, histogram }

    public private(set) var text = ""

    public init() { text.reserveCapacity(16 * 1024) }

    /// Starts a metric family: HELP and TYPE lines. Call once per name, before its samples.
    public mutating func family(_ name: String, _ kind: Kind, help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(kind.rawValue)\n"
    }

    public mutating func sample(_ name: String, labels: [(key: String, value: String)] = [], _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{"
            for (index, label) in labels.enumerated() {
                if index > 0 { text += "," }
                text += label.key
                text += "=\""
                text += Self.escape(label.value)
                text += "\""
            }
            text += "}"
        }
        text += " "
        text += Self.format(value)
        text += "\n"
    }

    /// Writes a histogram's `_bucket`, `_sum` and `_count` samples.
    public mutating func histogram(_ name: String, labels: [(key: String, value: String)], _ histogram: Histogram) {
        var cumulative: UInt64 = 0
        for (index, bound) in histogram.bounds.enumerated() {
            cumulative += histogram.counts[index]
            sample(name + "_bucket", labels: labels + [("le", Self.format(bound))], Double(cumulative))
        }
        cumulative += histogram.counts[histogram.bounds.count]
        sample(name + "_bucket", labels: labels + [("le", "+Inf")], Double(cumulative))
        sample(name + "_sum", labels: labels, histogram.sum)
        sample(name + "_count", labels: labels, Double(cumulative))
    }

    static func escape(_ value: String) -> String {
        guard value.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return value }
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}

/// A fixed-bucket histogram as a value: observed on one loop, merged across loops at scrape.
/// `counts` holds one non-cumulative count per bucket plus the overflow bucket.
public struct Histogram: Sendable {
    public let bounds: [Double]
    public private(set) var counts: [UInt64]
    public private(set) var sum: Double = 0

    public static let latencyBounds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    public static let lifetimeBounds: [Double] = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600]

    public init(bounds: [Double]) {
        self.bounds = bounds
        counts = Array(repeating: 0, count: bounds.count + 1)
    }

    public var count: UInt64 { counts.reduce(0, +) }

    public mutating func observe(_ value: Double) {
        var index = 0
        while index < bounds.count && value > bounds[index] { index += 1 }
        counts[index] += 1
        sum += value
    }

    public mutating func merge(_ other: Histogram) {
        for index in counts.indices where index < other.counts.count { counts[index] += other.counts[index] }
        sum += other.sum
    }
}
