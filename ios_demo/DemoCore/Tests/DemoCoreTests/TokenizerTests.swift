import XCTest

@testable import DemoCore

final class TokenizerTests: XCTestCase {
    let golden = TestFiles.golden

    func testByteLevelTokenizerJsonMatchesPython() throws {
        let r = SelfCheck.tokenizer(try golden.tokenizer("byte_level"))
        XCTAssertTrue(r.passed, r.description)
    }

    func testQwen2StyleBpeMatchesPython() throws {
        let t = try golden.tokenizer("qwen2_style_bpe")
        XCTAssertGreaterThan(((t.json["model"] as! [String: Any])["merges"] as! [Any]).count, 200)
        let r = SelfCheck.tokenizer(t)
        XCTAssertTrue(r.passed, r.description)
    }

    func testBuiltInByteTokenizerEqualsTheJsonOne() throws {
        let t = try golden.tokenizer("byte_level")
        let enc = try PromptEncoder(ByteTokenizer(), maxTokens: t.maxTokens)
        XCTAssertEqual(enc.padId, 256)
        for c in t.cases { XCTAssertEqual(try enc.ids(c.text), c.ids, c.text) }
    }

    func testPaddingTruncationAndMask() throws {
        let enc = try PromptEncoder(ByteTokenizer(), maxTokens: 8)
        let (ids, mask) = try enc.encode("abc")
        XCTAssertEqual(ids.shape, [1, 8])
        XCTAssertEqual(ids.longs!, [97, 98, 99, 256, 256, 256, 256, 256])
        XCTAssertEqual(mask.floats!, [1, 1, 1, 0, 0, 0, 0, 0])
        XCTAssertEqual(try enc.ids("0123456789").count, 8)
        let (ids2, mask2) = try enc.encode("a<|endoftext|>b")
        XCTAssertEqual(ids2.longs!, [97, 256, 98, 256, 256, 256, 256, 256])
        XCTAssertEqual(mask2.floats!.reduce(0, +), 2)
    }

    func testBpeMergesByRankNotByPosition() throws {
        let json: [String: Any] = [
            "model": [
                "type": "BPE", "dropout": NSNull(), "unk_token": NSNull(),
                "vocab": ["a": 0, "b": 1, "c": 2, "bc": 3, "abc": 4, "ab": 5, "<pad>": 6],
                "merges": ["b c", "a bc", "a b"],
            ] as [String: Any],
            "added_tokens": [["id": 6, "content": "<pad>", "special": true]],
            "normalizer": NSNull(), "pre_tokenizer": NSNull(), "post_processor": NSNull(),
        ]
        let tok = try HfTokenizer(json: json)
        XCTAssertEqual(try tok.encodeIds("abc"), [4])
        XCTAssertEqual(try tok.encodeIds("abab"), [5, 5])
        XCTAssertEqual(try tok.encodeIds("abc<pad>a"), [4, 6, 0])
    }

    func testSplitBehaviours() throws {
        let p = try NSRegularExpression(pattern: "-")
        XCTAssertEqual(HfTokenizer.split("a-b", p, behavior: "Isolated", invert: false), ["a", "-", "b"])
        XCTAssertEqual(HfTokenizer.split("a-b", p, behavior: "Removed", invert: false), ["a", "b"])
        XCTAssertEqual(HfTokenizer.split("a-b", p, behavior: "MergedWithPrevious", invert: false), ["a-", "b"])
        XCTAssertEqual(HfTokenizer.split("a-b", p, behavior: "MergedWithNext", invert: false), ["a", "-b"])
        XCTAssertEqual(HfTokenizer.split("a--b", p, behavior: "Contiguous", invert: false), ["a", "--", "b"])
    }

    func testUnicodeWhitespaceIsWhitespaceLikeOniguruma() throws {
        let re = try HfTokenizer.compile(#"^\s+$"#)
        func matches(_ s: String) -> Bool { re.firstMatch(in: s, range: NSRange(location: 0, length: (s as NSString).length)) != nil }
        for ws in ["\u{a0}", "\u{85}", "\u{0b}", "\u{2028}", "\u{3000}"] { XCTAssertTrue(matches(ws), ws.debugDescription) }
        for non in ["\u{200b}", "\u{180e}", "\u{1c}"] { XCTAssertFalse(matches(non), non.debugDescription) }
    }

    func testUnsupportedTokenizerFeaturesAreRejected() throws {
        let base = try golden.tokenizer("byte_level").json
        var wordPiece = base
        var model = base["model"] as! [String: Any]
        model["type"] = "WordPiece"
        wordPiece["model"] = model
        XCTAssertThrowsError(try HfTokenizer(json: wordPiece))
        var template = base
        template["post_processor"] = ["type": "TemplateProcessing"]
        XCTAssertThrowsError(try HfTokenizer(json: template))
        var metaspace = base
        metaspace["pre_tokenizer"] = ["type": "Metaspace"]
        XCTAssertThrowsError(try HfTokenizer(json: metaspace))
        XCTAssertThrowsError(try PromptEncoder(HfTokenizer(json: base), maxTokens: 300, padToken: "<missing>"))
    }
}
