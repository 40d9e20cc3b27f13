import Foundation

/// Text to token ids (no padding).
public protocol TextTokenizer {
    func encodeIds(_ text: String) throws -> [Int]
    func tokenId(_ token: String) -> Int?
}

/// GPT-2's reversible byte <-> printable-char map (the ByteLevel alphabet).
public enum ByteLevel {
    public static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar]()
        var shift: UInt32 = 0
        for b in 0..<256 {
            let keep = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if keep {
                table.append(Unicode.Scalar(UInt32(b))!)
            } else {
                table.append(Unicode.Scalar(256 + shift)!)
                shift += 1
            }
        }
        return table
    }()

    public static func encode(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        for b in s.utf8 { out.append(byteToScalar[Int(b)]) }
        return String(out)
    }

    /// GPT-2 pre-tokenizer regex used by ByteLevel(use_regex=true).
    public static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
}

/// The subset of Hugging Face `tokenizers` needed for byte-level BPE tokenizers (GPT-2 style, the
/// HART default byte tokenizer, Qwen2); the same scope as the Kotlin HfTokenizer, and checked
/// against the same golden cases. Regexes run on ICU (NSRegularExpression) with `\s` / `\S`
/// rewritten to `\p{White_Space}` / `\P{White_Space}`: ICU's `\s` omits VT and NEL, which
/// the Oniguruma engine of `tokenizers` treats as whitespace.
///
/// Vocabulary lookups use Swift String keys, which compare by canonical equivalence. That is exact
/// for byte-level vocabularies (their alphabet has no combining marks); other model types are
/// rejected at load time.
public final class HfTokenizer: TextTokenizer {
    typealias PreTokenizer = ([String]) throws -> [String]

    private var vocab = [String: Int]()
    private var merges = [UInt64: UInt64]()  // (idA << 32 | idB) -> (rank << 32 | newId)
    private let added: [(content: [UInt16], text: String, id: Int)]
    private var normalizers = [(String) -> String]()
    private var preTokenizers = [PreTokenizer]()
    private let unkId: Int?
    private let byteFallback: Bool
    private let fuseUnk: Bool
    private let ignoreMerges: Bool
    private var cache = [String: [Int]]()

    public convenience init(data: Data) throws {
        try self.init(json: J.object(J.parse(data), "tokenizer.json"))
    }

    public init(json: [String: Any]) throws {
        let model = try J.object(json["model"], "model")
        if let t = model["type"] as? String, t != "BPE" { throw ManifestError("tokenizer model \(t) is not BPE") }
        if !J.isNull(model["dropout"]) { throw ManifestError("BPE dropout is not supported") }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[k] as? String, !s.isEmpty { throw ManifestError("BPE \(k) is not supported") }
        }
        let v = try J.object(model["vocab"], "vocab")
        for (k, id) in v { vocab[k] = try J.int(id, "vocab id") }
        let m = try J.array(model["merges"], "merges")
        for (rank, e) in m.enumerated() {
            let a: String, b: String
            if let pair = e as? [Any], pair.count == 2, let x = pair[0] as? String, let y = pair[1] as? String {
                (a, b) = (x, y)
            } else if let s = e as? String {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw ManifestError("bad merge '\(s)'") }
                (a, b) = (String(parts[0]), String(parts[1]))
            } else {
                throw ManifestError("bad merge entry \(e)")
            }
            guard let ia = vocab[a], let ib = vocab[b] else { throw ManifestError("merge '\(a) \(b)': part not in vocab") }
            guard let inew = vocab[a + b] else { throw ManifestError("merge '\(a) \(b)': '\(a + b)' not in vocab") }
            let key = UInt64(ia) << 32 | UInt64(UInt32(ib))
            if merges[key] == nil { merges[key] = UInt64(rank) << 32 | UInt64(UInt32(inew)) }
        }
        let vocabSoFar = vocab
        unkId = (model["unk_token"] as? String).flatMap { vocabSoFar[$0] }
        byteFallback = J.bool(model["byte_fallback"], default: false)
        fuseUnk = J.bool(model["fuse_unk"], default: false)
        ignoreMerges = J.bool(model["ignore_merges"], default: false)

        var addedTokens = [(content: [UInt16], text: String, id: Int)]()
        for a in (json["added_tokens"] as? [Any]) ?? [] {
            let o = try J.object(a, "added token")
            let content = try J.string(o["content"], "added token content")
            for flag in ["single_word", "lstrip", "rstrip"] where J.bool(o[flag], default: false) {
                throw ManifestError("added token \(content): \(flag) is not supported")
            }
            addedTokens.append((Array(content.utf16), content, try J.int(o["id"], "added token id")))
        }
        added = addedTokens.sorted { $0.content.count > $1.content.count }
        for a in added where vocab[a.text] == nil { vocab[a.text] = a.id }

        normalizers = try Self.parseNormalizer(json["normalizer"])
        preTokenizers = try Self.parsePreTokenizer(json["pre_tokenizer"])
        if let pp = json["post_processor"], !J.isNull(pp) {
            let t = try J.string(try J.object(pp, "post_processor")["type"], "post_processor type")
            if t != "ByteLevel" { throw ManifestError("post_processor \(t) is not supported (it would add tokens)") }
        }
    }

    public func tokenId(_ token: String) -> Int? { vocab[token] }

    public func encodeIds(_ text: String) throws -> [Int] {
        var out = [Int]()
        for (segment, addedId) in splitAdded(text) {
            if let id = addedId {
                out.append(id)
                continue
            }
            var s = segment
            for n in normalizers { s = n(s) }
            var pieces = [s]
            for p in preTokenizers { pieces = try p(pieces) }
            for piece in pieces where !piece.isEmpty { out += bpe(piece) }
        }
        return out
    }

    /// Leftmost-longest split on added tokens, comparing UTF-16 units (no canonical equivalence).
    private func splitAdded(_ text: String) -> [(String, Int?)] {
        if added.isEmpty { return [(text, nil)] }
        let u = Array(text.utf16)
        var out = [(String, Int?)]()
        var start = 0
        var i = 0
        func slice(_ a: Int, _ b: Int) -> String { String(decoding: u[a..<b], as: UTF16.self) }
        while i < u.count {
            let hit = added.first { t in
                t.content.count <= u.count - i && u[i..<(i + t.content.count)].elementsEqual(t.content)
            }
            guard let h = hit else {
                i += 1
                continue
            }
            if i > start { out.append((slice(start, i), nil)) }
            out.append((h.text, h.id))
            i += h.content.count
            start = i
        }
        if start < u.count { out.append((slice(start, u.count), nil)) }
        return out
    }

    private func bpe(_ piece: String) -> [Int] {
        if let c = cache[piece] { return c }
        let r = bpeUncached(piece)
        if cache.count < 50_000 { cache[piece] = r }
        return r
    }

    private func bpeUncached(_ piece: String) -> [Int] {
        if ignoreMerges, let id = vocab[piece] { return [id] }
        var syms = [Int]()
        var lastWasUnk = false
        for scalar in piece.unicodeScalars {
            let ch = String(scalar)
            if let id = vocab[ch] {
                syms.append(id)
                lastWasUnk = false
            } else if byteFallback {
                for b in ch.utf8 {
                    if let id = vocab[String(format: "<0x%02X>", b)] ?? unkId { syms.append(id) }
                }
                lastWasUnk = false
            } else if let unk = unkId {
                if !(fuseUnk && lastWasUnk) { syms.append(unk) }
                lastWasUnk = true
            }
        }
        // Repeatedly merge the adjacent pair with the lowest rank (leftmost on ties), as tokenizers does.
        while syms.count > 1 {
            var bestRank = UInt64.max
            var bestPos = -1
            var bestNew = 0
            for p in 0..<(syms.count - 1) {
                let key = UInt64(syms[p]) << 32 | UInt64(UInt32(syms[p + 1]))
                guard let m = merges[key] else { continue }
                if m >> 32 < bestRank {
                    bestRank = m >> 32
                    bestPos = p
                    bestNew = Int(UInt32(truncatingIfNeeded: m))
                }
            }
            if bestPos < 0 { break }
            syms[bestPos] = bestNew
            syms.remove(at: bestPos + 1)
        }
        return syms
    }

    static func parseNormalizer(_ n: Any?) throws -> [(String) -> String] {
        if J.isNull(n) { return [] }
        let o = try J.object(n, "normalizer")
        let type = try J.string(o["type"], "normalizer type")
        switch type {
        case "NFC": return [{ $0.precomposedStringWithCanonicalMapping }]
        case "NFD": return [{ $0.decomposedStringWithCanonicalMapping }]
        case "NFKC": return [{ $0.precomposedStringWithCompatibilityMapping }]
        case "NFKD": return [{ $0.decomposedStringWithCompatibilityMapping }]
        case "Lowercase": return [{ $0.lowercased() }]
        case "Sequence": return try J.array(o["normalizers"], "normalizers").flatMap { try parseNormalizer($0) }
        default: throw ManifestError("normalizer \(type) is not supported")
        }
    }

    static func parsePreTokenizer(_ p: Any?) throws -> [PreTokenizer] {
        if J.isNull(p) { return [] }
        let o = try J.object(p, "pre_tokenizer")
        let type = try J.string(o["type"], "pre_tokenizer type")
        switch type {
        case "Sequence":
            return try J.array(o["pretokenizers"], "pretokenizers").flatMap { try parsePreTokenizer($0) }
        case "ByteLevel":
            let prefix = J.bool(o["add_prefix_space"], default: false)
            let regex = J.bool(o["use_regex"], default: true) ? try compile(ByteLevel.gpt2Pattern) : nil
            return [
                { pieces in
                    pieces.flatMap { piece -> [String] in
                        let p0 = prefix && !piece.hasPrefix(" ") ? " " + piece : piece
                        let parts = regex.map { split(p0, $0, behavior: "Isolated", invert: false) } ?? [p0]
                        return parts.map { ByteLevel.encode($0) }
                    }
                }
            ]
        case "Split":
            let pat = try J.object(o["pattern"], "Split pattern")
            let regex: NSRegularExpression
            if let r = pat["Regex"] as? String {
                regex = try compile(r)
            } else {
                regex = try NSRegularExpression(
                    pattern: NSRegularExpression.escapedPattern(for: try J.string(pat["String"], "Split String")))
            }
            let behavior = try J.string(o["behavior"], "Split behavior")
            let known = ["Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"]
            if !known.contains(behavior) { throw ManifestError("Split behavior \(behavior) is not supported") }
            let invert = J.bool(o["invert"], default: false)
            return [{ pieces in pieces.flatMap { split($0, regex, behavior: behavior, invert: invert) } }]
        default:
            throw ManifestError("pre_tokenizer \(type) is not supported")
        }
    }

    /// ICU regex with `\s`/`\S` as Unicode White_Space (Oniguruma semantics).
    public static func compile(_ pattern: String) throws -> NSRegularExpression {
        var out = ""
        var it = pattern.makeIterator()
        while let c = it.next() {
            if c == "\\", let n = it.next() {
                switch n {
                case "s": out += "\\p{White_Space}"
                case "S": out += "\\P{White_Space}"
                default: out += "\\\(n)"
                }
            } else {
                out.append(c)
            }
        }
        return try NSRegularExpression(pattern: out)
    }

    /// tokenizers' split with a SplitDelimiterBehavior; empty pieces are dropped.
    public static func split(_ s: String, _ regex: NSRegularExpression, behavior: String, invert: Bool) -> [String] {
        let ns = s as NSString
        var spans = [(NSRange, Bool)]()
        var last = 0
        for m in regex.matches(in: s, range: NSRange(location: 0, length: ns.length)) where m.range.length > 0 {
            if m.range.location > last { spans.append((NSRange(location: last, length: m.range.location - last), false)) }
            spans.append((m.range, true))
            last = m.range.location + m.range.length
        }
        if last < ns.length { spans.append((NSRange(location: last, length: ns.length - last), false)) }
        if invert { spans = spans.map { ($0.0, !$0.1) } }
        var out = [String]()
        switch behavior {
        case "Removed":
            out = spans.filter { !$0.1 }.map { ns.substring(with: $0.0) }
        case "MergedWithPrevious":
            for (r, delim) in spans {
                let t = ns.substring(with: r)
                if delim, let l = out.last { out[out.count - 1] = l + t } else { out.append(t) }
            }
        case "MergedWithNext":
            var pending = ""
            for (r, delim) in spans {
                let t = ns.substring(with: r)
                if delim {
                    pending += t
                } else {
                    out.append(pending + t)
                    pending = ""
                }
            }
            if !pending.isEmpty { out.append(pending) }
        case "Contiguous":
            var prevDelim = false
            for (r, delim) in spans {
                let t = ns.substring(with: r)
                if delim && prevDelim, let l = out.last { out[out.count - 1] = l + t } else { out.append(t) }
                prevDelim = delim
            }
        default:  // Isolated
            out = spans.map { ns.substring(with: $0.0) }
        }
        return out.filter { !$0.isEmpty }
    }
}

/// The HART default byte-level tokenizer without a JSON file: id = UTF-8 byte value, pad = 256.
public struct ByteTokenizer: TextTokenizer {
    public static let padToken = "<|endoftext|>"
    public static let padId = 256

    public init() {}

    public func encodeIds(_ text: String) throws -> [Int] {
        var out = [Int]()
        let pad = Array(Self.padToken.utf8)
        let bytes = Array(text.utf8)
        var i = 0
        while i < bytes.count {
            if i + pad.count <= bytes.count && bytes[i..<(i + pad.count)].elementsEqual(pad) {
                out.append(Self.padId)
                i += pad.count
            } else {
                out.append(Int(bytes[i]))
                i += 1
            }
        }
        return out
    }

    public func tokenId(_ token: String) -> Int? { token == Self.padToken ? Self.padId : nil }
}

/// HART's fixed-length prompt contract: truncate to maxTokens, right-pad with the pad id, mask = ids != pad.
public struct PromptEncoder {
    public let tokenizer: TextTokenizer
    public let maxTokens: Int
    public let padId: Int

    public init(_ tokenizer: TextTokenizer, maxTokens: Int = 300, padToken: String = "<|endoftext|>") throws {
        guard let pad = tokenizer.tokenId(padToken) else {
            throw ManifestError("pad token '\(padToken)' is not in the tokenizer vocabulary")
        }
        self.tokenizer = tokenizer
        self.maxTokens = maxTokens
        self.padId = pad
    }

    public func ids(_ text: String) throws -> [Int] {
        let ids = try tokenizer.encodeIds(text)
        return ids.count > maxTokens ? Array(ids[0..<maxTokens]) : ids
    }

    /// token_ids int64 [1, maxTokens] and context_mask float32 [1, maxTokens].
    public func encode(_ text: String) throws -> (ids: Tensor, mask: Tensor) {
        let ids = try ids(text)
        var row = [Int64](repeating: Int64(padId), count: maxTokens)
        for (i, v) in ids.enumerated() { row[i] = Int64(v) }
        let mask = row.map { $0 != Int64(padId) ? Float(1) : Float(0) }
        return (Tensor(longs: row, shape: [1, maxTokens]), Tensor(floats: mask, shape: [1, maxTokens]))
    }
}
