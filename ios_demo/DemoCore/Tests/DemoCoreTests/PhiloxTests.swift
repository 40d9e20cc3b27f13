import XCTest

@testable import DemoCore

final class PhiloxTests: XCTestCase {
    let vectors = try! JSONSerialization.jsonObject(with: TestFiles.data("docs/rng_test_vectors.json")) as! [String: Any]

    func hex(_ s: Any) -> UInt32 { UInt32(s as! String, radix: 16)! }

    func testKnownAnswerVectors() {
        let kat = vectors["kat"] as! [[String: Any]]
        XCTAssertEqual(kat.count, 3)
        for (i, k) in kat.enumerated() {
            let got = Philox.block((k["counter"] as! [Any]).map(hex), (k["key"] as! [Any]).map(hex))
            XCTAssertEqual(got, (k["expected"] as! [Any]).map(hex), "kat \(i)")
        }
    }

    func testWordsAndUniformsAreBitExact() {
        let cases = vectors["cases"] as! [[String: Any]]
        XCTAssertEqual(cases.count, 9)
        for (i, c) in cases.enumerated() {
            let seed = (c["seed"] as! NSNumber).uint64Value
            let stream = (c["stream"] as! NSNumber).uint64Value
            let offset = (c["offset"] as! NSNumber).uint64Value
            let words = (c["uint32"] as! [NSNumber]).map { $0.uint32Value }
            XCTAssertEqual(Philox.words(seed: seed, stream: stream, count: words.count, offset: offset), words, "uint32 case \(i)")
            let ub = (c["uniform_bits"] as! [Any]).map(hex)
            let u = Philox.uniform(seed: seed, stream: stream, count: ub.count, offset: offset)
            XCTAssertEqual(u.map(\.bitPattern), ub, "uniform case \(i)")
        }
    }

    func testNormalsAndGumbelsWithinTolerance() {
        for c in vectors["cases"] as! [[String: Any]] {
            let seed = (c["seed"] as! NSNumber).uint64Value
            let stream = (c["stream"] as! NSNumber).uint64Value
            let offset = (c["offset"] as! NSNumber).uint64Value
            for key in ["normal_bits", "gumbel_bits"] {
                let bits = (c[key] as! [Any]).map(hex)
                let got =
                    key == "normal_bits"
                    ? Philox.normal(seed: seed, stream: stream, count: bits.count, offset: offset)
                    : Philox.gumbel(seed: seed, stream: stream, count: bits.count, offset: offset)
                for (j, b) in bits.enumerated() {
                    let e = Float(bitPattern: b)
                    let d = abs(got[j] - e)
                    XCTAssertTrue(d <= 1e-6 || d <= 2 * e.ulp, "\(key) [\(j)]: \(got[j]) vs \(e)")
                }
            }
        }
    }

    func testAnySliceIsTheSameSequence() {
        let all = Philox.words(seed: 7, stream: 1005, count: 40)
        for off in [0, 1, 3, 4, 5, 17] {
            XCTAssertEqual(Array(all[off..<(off + 13)]), Philox.words(seed: 7, stream: 1005, count: 13, offset: UInt64(off)))
        }
        XCTAssertEqual(Array(Philox.normal(seed: 7, stream: 2000, count: 6).prefix(5)), Philox.normal(seed: 7, stream: 2000, count: 5))
    }

    func testUniformsStayInsideTheOpenInterval() {
        XCTAssertEqual(Philox.uniform(word: 0xFFFF_FFFF), 1 - 0x1p-24)
        XCTAssertEqual(Philox.uniform(word: 0), 0x1p-24)
    }

    func testPipelineNoiseMatchesPythonDrawNoise() {
        let r = SelfCheck.rng(TestFiles.golden)
        XCTAssertTrue(r.passed, r.description)
    }
}
