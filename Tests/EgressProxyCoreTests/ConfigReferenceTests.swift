import Foundation
import Testing

@testable import EgressProxyCore

/// docs/configuration.md against the parser, both ways: the keys it documents are exactly the
/// ones `ConfigSchema` (and so the parser) accepts, its examples parse, and each default it
/// states is what the parser fills in when the key is left out.
@Suite struct ConfigReferenceTests {
    static let page: String = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/configuration.md")
        return (try? String(contentsOf: url, encoding: .utf8)) ?? ""
    }()

    /// (key, default cell) of each row of the key table.
    static var rows: [(key: String, defaultCell: String)] {
        page.split(separator: "\n").compactMap { line in
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 5, cells[1].hasPrefix("`"), cells[1].hasSuffix("`") else { return nil }
            return (String(cells[1].dropFirst().dropLast()), cells[3])
        }
    }

    static var yamlBlocks: [String] {
        page.components(separatedBy: "```yaml\n").dropFirst().compactMap { $0.components(separatedBy: "```").first }
    }

    @Test func theTableDocumentsExactlyTheKeysTheParserReads() {
        #expect(!Self.page.isEmpty, "docs/configuration.md is readable")
        let documented = Set(Self.rows.map(\.key))
        let parsed = Set(ConfigSchema.paths)
        #expect(parsed.subtracting(documented).isEmpty, "read but not documented: \(parsed.subtracting(documented).sorted())")
        #expect(documented.subtracting(parsed).isEmpty, "documented but not read: \(documented.subtracting(parsed).sorted())")
        #expect(Self.rows.count == documented.count, "each key once")
    }

    @Test func everyExampleParses() {
        #expect(Self.yamlBlocks.count >= 2)
        for block in Self.yamlBlocks {
            if case .failure(let error) = ProxyConfig.parse(yaml: block) { Issue.record("\(error)\n\(block)") }
        }
    }

    /// The YAML with `key: value` set, and the same without it, for a key whose default can be
    /// written as a literal; nil for keys that live elsewhere.
    static func pair(_ key: String, _ value: String) -> (with: String, without: String)? {
        let parts = key.split(separator: ".").map(String.init)
        let name = parts.last ?? key
        switch parts.dropLast().joined(separator: ".") {
        case "":
            return ("\(name): \(value)\ntenants: [{name: t}]\n", "tenants: [{name: t}]\n")
        case "limits", "timeouts", "proxyProtocol":
            return ("\(parts[0]): {\(name): \(value)}\ntenants: [{name: t}]\n", "tenants: [{name: t}]\n")
        case "tenants[]":
            return ("tenants: [{name: t, \(name): \(value)}]\n", "tenants: [{name: t}]\n")
        case "tenants[].allow[]":
            return ("tenants: [{name: t, allow: [{host: a.example, \(name): \(value)}]}]\n",
                    "tenants: [{name: t, allow: [{host: a.example}]}]\n")
        default:
            return nil
        }
    }

    @Test func everyStatedDefaultIsTheParsersDefault() throws {
        var checked = 0
        for row in Self.rows {
            // Only a cell that is one literal (`5s`, `[443]`, `default`) states a default to check.
            let cell = row.defaultCell
            guard cell.hasPrefix("`"), cell.hasSuffix("`"), cell.filter({ $0 == "`" }).count == 2 else { continue }
            let literal = String(cell.dropFirst().dropLast())
            guard let (with, without) = Self.pair(row.key, literal) else {
                Issue.record("no way to check the default of \(row.key)")
                continue
            }
            let set = try ProxyConfig.parse(yaml: with).get()
            let unset = try ProxyConfig.parse(yaml: without).get()
            #expect(set == unset, "\(row.key): the stated default \(literal) is not what the parser fills in")
            checked += 1
        }
        #expect(checked >= 20, "defaults checked: \(checked)")
    }
}
