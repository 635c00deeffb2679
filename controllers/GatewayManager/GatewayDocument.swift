import Foundation
import Yams

/// The one ActionsGateway of a YAML stream, read the same way by `gmc render` and
/// `agc render-pod`: other kinds of documents are skipped (an example file carries its
/// Namespace and ResourceQuota too), a duplicate key or a malformed document is an error, and
/// the document is kept as JSON as well, for the fields the typed model does not hold (a
/// group's `podTemplate` is passed through to the worker pod as the tenant wrote it).
public struct GatewayDocument: Sendable {
    public let gateway: ActionsGateway
    /// The gateway's document as JSON, with YAML's scalars resolved as the API server would.
    public let json: [UInt8]

    /// Why a file yields no gateway, worded for a command line.
    public struct Unreadable: Error, CustomStringConvertible {
        public let description: String
    }

    /// Reads `path`, or stdin when it is `-`.
    public static func read(path: String) throws(Unreadable) -> GatewayDocument {
        let text = path == "-"
            ? String(data: FileHandle.standardInput.readDataToEndOfFile(), encoding: .utf8)
            : try? String(contentsOfFile: path, encoding: .utf8)
        guard let text else { throw Unreadable(description: "cannot read \(path)") }
        return try parse(yaml: text, source: path)
    }

    public static func parse(yaml: String, source: String) throws(Unreadable) -> GatewayDocument {
        var found: [(ActionsGateway, Node)] = []
        do {
            // Parser.nextRoot throws on a bad document, where `load_all`'s lazy sequence would
            // end quietly; Yams' parser refuses duplicate keys, so a CR cannot say one thing to
            // a reviewer and another to us.
            let parser = try Parser(yaml: yaml)
            while let document = try parser.nextRoot() {
                guard document["kind"]?.string == "ActionsGateway" else { continue }
                found.append((try YAMLDecoder().decode(ActionsGateway.self, from: document), document))
            }
        } catch {
            throw Unreadable(description: "\(source): \(error)")
        }
        guard found.count == 1, let (gateway, node) = found.first else {
            throw Unreadable(description: "\(source) must hold exactly one ActionsGateway (found \(found.count))")
        }
        guard let json = try? JSONSerialization.data(withJSONObject: jsonValue(node), options: [.sortedKeys]) else {
            throw Unreadable(description: "\(source): the ActionsGateway is not representable as JSON")
        }
        return GatewayDocument(gateway: gateway, json: Array(json))
    }

    /// A YAML node as the JSON value the API server would store: core-schema scalars only
    /// (no timestamps or binary: those stay strings), mapping keys as strings.
    private static func jsonValue(_ node: Node) -> Any {
        switch node {
        case .scalar(let scalar):
            switch Tag.Name(rawValue: node.tag.rawValue) {
            case .null: return NSNull()
            case .bool: return node.bool ?? scalar.string
            case .int: return node.int ?? scalar.string
            case .float: return node.float ?? scalar.string
            default: return scalar.string
            }
        case .mapping(let mapping):
            var object: [String: Any] = [:]
            for (key, value) in mapping { object[key.string ?? "\(key)"] = jsonValue(value) }
            return object
        case .sequence(let sequence):
            return sequence.map(jsonValue)
        case .alias:
            return NSNull()  // resolved by the parser before we see the tree
        }
    }
}
