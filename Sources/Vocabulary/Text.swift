extension StringProtocol {
    /// The text without the leading and trailing characters in `set`, such as HTTP's optional
    /// whitespace (`" \t"`). Here because the binaries link no Foundation for its trimming: the
    /// proxy's image would carry ICU's data.
    public func trimmed(of set: String) -> String {
        var slice = self[...]
        while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}
