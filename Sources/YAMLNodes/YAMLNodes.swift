import CYAML

/// One YAML document as a tree of scalars, sequences and mappings, read and written by libyaml
/// (Debian's libyaml-dev, the parser and emitter most YAML libraries wrap).
///
/// Why not Yams, which the controllers use: Yams is built on Foundation (its formatters and
/// regular expressions), and Foundation brings ICU's 34 MB of data into every binary that links
/// it with a static Swift standard library. The egress proxy needs only this tree, so it links
/// libyaml alone and its image stays small.
public struct YAMLNode: Sendable {
    /// What the node holds. Tags are not kept: a scalar is its text, and the reader decides
    /// what the text means (the proxy's config refuses what it cannot read, naming the line).
    public enum Value: Sendable {
        case scalar(String)
        case sequence([YAMLNode])
        case mapping([(key: YAMLNode, value: YAMLNode)])
    }

    /// How `YAML.emit` writes the node; reading sets it from the text, and nothing else uses it.
    public enum Style: Sendable {
        /// Scalars plain, collections in block style (the emitter quotes a scalar plain style cannot hold).
        case plain
        /// A double-quoted scalar: the emitter escapes quotes, backslashes and control characters.
        case doubleQuoted
        /// A flow sequence or mapping, `[a, b]`.
        case flow
    }

    public var value: Value
    public var style: Style
    /// The 1-based line where the node starts in the text it was read from; 0 for a built node.
    public var line: Int

    public init(_ value: Value, style: Style = .plain, line: Int = 0) {
        self.value = value
        self.style = style
        self.line = line
    }

    public static func plain(_ text: String) -> YAMLNode { YAMLNode(.scalar(text)) }
    public static func quoted(_ text: String) -> YAMLNode { YAMLNode(.scalar(text), style: .doubleQuoted) }
    public static func sequence(_ items: [YAMLNode], flow: Bool = false) -> YAMLNode { YAMLNode(.sequence(items), style: flow ? .flow : .plain) }
    /// A mapping with plain string keys, in the order given.
    public static func mapping(_ entries: [(String, YAMLNode)]) -> YAMLNode { YAMLNode(.mapping(entries.map { (.plain($0.0), $0.1) })) }

    /// The text of a scalar; nil for a collection.
    public var string: String? {
        if case .scalar(let text) = value { return text }
        return nil
    }
}

/// Text libyaml could not read, or a document past the limits, with the 1-based line.
public struct YAMLError: Error, CustomStringConvertible, Sendable {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

/// Reading and writing YAML text.
public enum YAML {
    /// Deeper nesting than this is refused: no config is this deep, and an alias to an
    /// enclosing node (`&a [*a]`) would otherwise recurse forever.
    public static let maxDepth = 64
    /// Nodes, counted after aliases expand: a few aliases to aliases ("billion laughs") must not
    /// make a tree of billions.
    public static let maxNodes = 1_000_000

    /// The one document in `text`; nil when it holds none (empty, or comments only). Anchors
    /// and aliases are expanded, tags are ignored (every scalar is its text), and more than one
    /// document is an error.
    public static func compose(_ text: String) throws(YAMLError) -> YAMLNode? {
        let bytes = Array(text.utf8)
        // libyaml asserts a non-null input, which an empty buffer need not have.
        guard !bytes.isEmpty else { return nil }
        let count = bytes.count
        return try bytes.withUnsafeBufferPointer { (buffer) throws(YAMLError) -> YAMLNode? in
            var parser = yaml_parser_t()
            guard yaml_parser_initialize(&parser) == 1 else { throw YAMLError(line: 0, message: "libyaml could not start (out of memory)") }
            defer { yaml_parser_delete(&parser) }
            yaml_parser_set_input_string(&parser, buffer.baseAddress, count)
            var document = yaml_document_t()
            guard yaml_parser_load(&parser, &document) == 1 else { throw problem(parser) }
            defer { yaml_document_delete(&document) }
            guard let root = yaml_document_get_root_node(&document) else { return nil }
            var budget = maxNodes
            let tree = try node(root, in: &document, depth: 0, budget: &budget)
            var next = yaml_document_t()
            guard yaml_parser_load(&parser, &next) == 1 else { throw problem(parser) }
            defer { yaml_document_delete(&next) }
            if let extra = yaml_document_get_root_node(&next) {
                throw YAMLError(line: Int(extra.pointee.start_mark.line) + 1, message: "a second document: the file must hold one")
            }
            return tree
        }
    }

    private static func problem(_ parser: yaml_parser_t) -> YAMLError {
        let what = parser.problem.map { String(cString: $0) } ?? "unreadable YAML"
        let context = parser.context.map { String(cString: $0) }
        return YAMLError(line: Int(parser.problem_mark.line) + 1, message: context.map { "\(what) \($0)" } ?? what)
    }

    private static func node(_ pointer: UnsafeMutablePointer<yaml_node_t>, in document: inout yaml_document_t, depth: Int,
                             budget: inout Int) throws(YAMLError) -> YAMLNode {
        let line = Int(pointer.pointee.start_mark.line) + 1
        budget -= 1
        guard budget >= 0 else { throw YAMLError(line: line, message: "more than \(maxNodes) nodes once aliases are expanded") }
        guard depth < maxDepth else { throw YAMLError(line: line, message: "nested deeper than \(maxDepth) levels") }
        switch pointer.pointee.type {
        case YAML_SCALAR_NODE:
            let scalar = pointer.pointee.data.scalar
            let text = String(decoding: UnsafeBufferPointer(start: scalar.value, count: scalar.length), as: UTF8.self)
            let quoted = scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE || scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE
            return YAMLNode(.scalar(text), style: quoted ? .doubleQuoted : .plain, line: line)
        case YAML_SEQUENCE_NODE:
            let items = pointer.pointee.data.sequence.items
            var children: [YAMLNode] = []
            var item = items.start
            while let current = item, current != items.top {
                guard let child = yaml_document_get_node(&document, current.pointee) else { break }
                children.append(try node(child, in: &document, depth: depth + 1, budget: &budget))
                item = current + 1
            }
            return YAMLNode(.sequence(children), style: pointer.pointee.data.sequence.style == YAML_FLOW_SEQUENCE_STYLE ? .flow : .plain, line: line)
        case YAML_MAPPING_NODE:
            let pairs = pointer.pointee.data.mapping.pairs
            var entries: [(key: YAMLNode, value: YAMLNode)] = []
            var pair = pairs.start
            while let current = pair, current != pairs.top {
                guard let key = yaml_document_get_node(&document, current.pointee.key),
                    let value = yaml_document_get_node(&document, current.pointee.value)
                else { break }
                entries.append((try node(key, in: &document, depth: depth + 1, budget: &budget),
                                try node(value, in: &document, depth: depth + 1, budget: &budget)))
                pair = current + 1
            }
            return YAMLNode(.mapping(entries), style: pointer.pointee.data.mapping.style == YAML_FLOW_MAPPING_STYLE ? .flow : .plain, line: line)
        default:
            throw YAMLError(line: line, message: "an empty node")
        }
    }

    /// The document as YAML text: no width limit, ASCII only (everything else escaped in
    /// double-quoted scalars), block collections unless a node asks for flow. libyaml writes
    /// every scalar in its style when it can hold the text and quotes it when not, so no value
    /// can end its scalar early and add keys of its own.
    public static func emit(_ root: YAMLNode) -> String {
        var emitter = yaml_emitter_t()
        guard yaml_emitter_initialize(&emitter) == 1 else { return "" }
        defer { yaml_emitter_delete(&emitter) }
        let sink = Sink()
        yaml_emitter_set_output(&emitter, { data, buffer, size in
            guard let data, let buffer else { return 0 }
            Unmanaged<Sink>.fromOpaque(data).takeUnretainedValue().bytes.append(contentsOf: UnsafeBufferPointer(start: buffer, count: size))
            return 1
        }, Unmanaged.passUnretained(sink).toOpaque())
        yaml_emitter_set_width(&emitter, -1)
        yaml_emitter_set_unicode(&emitter, 0)
        var ok = true
        func send(_ make: (inout yaml_event_t) -> Int32) {
            guard ok else { return }
            var event = yaml_event_t()
            // yaml_emitter_emit takes the event, also when it fails.
            ok = make(&event) == 1 && yaml_emitter_emit(&emitter, &event) == 1
        }
        func write(_ node: YAMLNode) {
            switch node.value {
            case .scalar(let text):
                var bytes = Array(text.utf8)
                let style = node.style == .doubleQuoted ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_PLAIN_SCALAR_STYLE
                send { event in bytes.withUnsafeMutableBufferPointer { yaml_scalar_event_initialize(&event, nil, nil, $0.baseAddress, Int32($0.count), 1, 1, style) } }
            case .sequence(let items):
                send { yaml_sequence_start_event_initialize(&$0, nil, nil, 1, node.style == .flow ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE) }
                items.forEach(write)
                send { yaml_sequence_end_event_initialize(&$0) }
            case .mapping(let entries):
                send { yaml_mapping_start_event_initialize(&$0, nil, nil, 1, node.style == .flow ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE) }
                for entry in entries {
                    write(entry.key)
                    write(entry.value)
                }
                send { yaml_mapping_end_event_initialize(&$0) }
            }
        }
        send { yaml_stream_start_event_initialize(&$0, YAML_UTF8_ENCODING) }
        send { yaml_document_start_event_initialize(&$0, nil, nil, nil, 1) }
        write(root)
        send { yaml_document_end_event_initialize(&$0, 1) }
        send { yaml_stream_end_event_initialize(&$0) }
        guard ok, yaml_emitter_flush(&emitter) == 1 else { return "" }
        return withExtendedLifetime(sink) { String(decoding: sink.bytes, as: UTF8.self) }
    }
}

/// The emitter's output, appended by its write callback (on the emitting thread only).
private final class Sink {
    var bytes: [UInt8] = []
}
