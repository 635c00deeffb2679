import Testing
import Yams
@testable import YAMLNodes

/// The proxy's YAML over libyaml: what it reads (lines, aliases, limits, one document) and
/// what it writes (hostile strings stay inside their scalars, and the text is what Yams, which
/// wraps the same emitter, wrote before: rendered ConfigMaps do not change on upgrade).
@Suite struct YAMLNodesTests {
    func scalars(_ node: YAMLNode?) -> [String] {
        switch node?.value {
        case .scalar(let text)?: return [text]
        case .sequence(let items)?: return items.flatMap(scalars)
        case .mapping(let entries)?: return entries.flatMap { scalars($0.key) + scalars($0.value) }
        case nil: return []
        }
    }

    @Test func readsTheTreeWithTheLineOfEveryNode() throws {
        let root = try #require(try YAML.compose("# a comment\nlisten: 127.0.0.1:3128\ntenants:\n  - name: a\n    ports: [443, \"80\"]\n"))
        guard case .mapping(let top) = root.value else { Issue.record("not a mapping"); return }
        #expect(top.map { $0.key.string } == ["listen", "tenants"])
        #expect(top[0].key.line == 2 && top[0].value.string == "127.0.0.1:3128")
        guard case .sequence(let tenants) = top[1].value.value, case .mapping(let tenant) = tenants.first?.value else {
            Issue.record("no tenant list")
            return
        }
        #expect(tenants[0].line == 4 && tenant[1].value.line == 5)
        #expect(scalars(tenant[1].value) == ["443", "80"] && tenant[1].value.style == .flow)
    }

    @Test func anEmptyStreamHoldsNoDocumentAndASecondDocumentIsRefused() throws {
        #expect(try YAML.compose("") == nil)
        #expect(try YAML.compose("# only a comment\n\n") == nil)
        #expect(throws: YAMLError.self) { try YAML.compose("a: 1\n---\nb: 2\n") }
        do {
            _ = try YAML.compose("a: 1\n---\nb: 2\n")
        } catch {
            #expect(error.line == 3, "\(error)")
        }
    }

    @Test func brokenTextNamesItsLine() {
        do {
            _ = try YAML.compose("a: 1\nb: [unclosed\n")
            Issue.record("accepted")
        } catch {
            #expect(error.line == 3 && !error.message.isEmpty, "\(error)")
        }
    }

    @Test func aliasesExpandButNeitherCyclesNorLaughsRunAway() throws {
        let root = try YAML.compose("base: &b [x, y]\ncopy: *b\n")
        #expect(scalars(root) == ["base", "x", "y", "copy", "x", "y"])
        #expect(throws: YAMLError.self) { try YAML.compose("a: &a [*a]\n") }
        var laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for level in 1...9 {
            laughs += "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ") + "]\n"
        }
        do {
            _ = try YAML.compose(laughs)
            Issue.record("ten billion nodes accepted")
        } catch {
            #expect(error.message.contains("nodes"), "\(error)")
        }
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: YAMLError.self) { try YAML.compose(deep) }
    }

    @Test func hostileStringsStayInsideTheirScalars() throws {
        let hostile = ["a: b", "x\"\ny: z", "- item", "# not a comment", "\\", "\u{7}bell", "tab\there", "ünïcode", "", "{flow: 1}",
                       "*alias", "&anchor", "!tag", "---", "...", "  leading", "trailing  ", "key:\n  nested: true", "null", "~"]
        let tree = YAMLNode.mapping(hostile.enumerated().map { ("k\($0.offset)", .quoted($0.element)) }
                                    + [("plain", .sequence(hostile.map(YAMLNode.plain), flow: true))])
        let text = YAML.emit(tree)
        #expect(text.utf8.allSatisfy { $0 < 0x80 }, "ASCII only")
        let read = try #require(try YAML.compose(text))
        #expect(scalars(read) == scalars(tree), "\(text)")
    }

    @Test func writesWhatYamsWrote() throws {
        let tree = YAMLNode.mapping([
            ("listen", .quoted("0.0.0.0:3128")), ("loops", .plain("2")),
            ("timeouts", .mapping([("header", .quoted("5s")), ("idle", .quoted("300s"))])),
            ("deny", .quoted("default")),
            ("tenants", .sequence([.mapping([("name", .quoted("team-a")), ("enabled", .plain("true")),
                                             ("allow", .sequence([.mapping([("host", .quoted("*.github.com")),
                                                                            ("ports", .sequence([.plain("443"), .quoted("8000-8080")], flow: true))])])),
                                             ("parentProxy", .quoted("http://user:p\"w@parent:3128"))])])),
        ])
        func yams(_ node: YAMLNode) -> Yams.Node {
            switch node.value {
            case .scalar(let text): return .scalar(.init(text, .implicit, node.style == .doubleQuoted ? .doubleQuoted : .plain))
            case .sequence(let items): return .sequence(.init(items.map(yams), .implicit, node.style == .flow ? .flow : .any))
            case .mapping(let entries): return .mapping(.init(entries.map { (yams($0.key), yams($0.value)) }))
            }
        }
        let expected = try Yams.serialize(node: yams(tree), width: -1, allowUnicode: false)
        #expect(YAML.emit(tree) == expected)
    }
}
