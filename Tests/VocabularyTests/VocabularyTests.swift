import Testing
import Vocabulary

/// The exposition text Prometheus parses and the JSON strings every log line is made of.
@Suite struct PrometheusWriterTests {
    @Test func labelValuesAreEscapedAndNumbersWrittenPlainly() {
        var out = PrometheusWriter()
        out.family("x_total", .counter, help: "Things.")
        out.sample("x_total", labels: [("tenant", #"a"b\c"#), ("line", "1\n2")], 3)
        out.sample("x_total", 0.25)
        out.sample("x_total", .infinity)
        #expect(out.text == """
            # HELP x_total Things.
            # TYPE x_total counter
            x_total{tenant="a\\"b\\\\c",line="1\\n2"} 3
            x_total 0.25
            x_total +Inf

            """)
    }

    @Test func aHistogramsBucketsAreCumulativeWithTheOverflowInInf() {
        var histogram = Histogram(bounds: [0.1, 1])
        for value in [0.05, 0.1, 0.5, 3, 7] { histogram.observe(value) }
        var other = Histogram(bounds: [0.1, 1])
        other.observe(0.2)
        histogram.merge(other)
        #expect(histogram.count == 6)
        var out = PrometheusWriter()
        out.histogram("d_seconds", labels: [("t", "a")], histogram)
        let lines = out.text.split(separator: "\n").map(String.init)
        #expect(lines == [
            #"d_seconds_bucket{t="a",le="0.1"} 2"#, #"d_seconds_bucket{t="a",le="1"} 4"#, #"d_seconds_bucket{t="a",le="+Inf"} 6"#,
            #"d_seconds_sum{t="a"} 10.85"#, #"d_seconds_count{t="a"} 6"#,
        ])
    }
}

@Suite struct JSONTextTests {
    @Test(arguments: [
        ("plain", #""plain""#), ("quote\"back\\slash", #""quote\"back\\slash""#), ("tab\tnew\nline\r", #""tab\tnew\nline\r""#),
        ("\u{01}\u{1f}", #""\u0001\u001f""#), ("ünï ✓", "\"ünï ✓\""),
    ])
    func stringsAreQuoted(value: String, expected: String) { #expect(JSON.quote(value) == expected) }

    @Test(arguments: [
        (UInt64(0), "1970-01-01T00:00:00.000Z"), (951_782_400_123_000_000, "2000-02-29T00:00:00.123Z"),
        (1_796_601_599_999_000_000, "2026-12-06T23:59:59.999Z"), (4_107_542_400_000_000_000, "2100-03-01T00:00:00.000Z"),
    ])
    func timestampsAreRFC3339UTC(nanoseconds: UInt64, expected: String) {
        #expect(JSON.timestamp(epochNanoseconds: nanoseconds) == expected)
    }
}
