import Foundation
import XCTest

@testable import DemoCore

/// docs/preview_golden.json (tools/make_preview_golden.py, checked fresh by tests/test_preview.py).
final class PreviewTests: XCTestCase {
    func testFixtureCasesMatchPython() throws {
        let golden = try J.object(J.parse(TestFiles.data("docs/preview_golden.json")), "golden")
        let cases = try J.array(golden["cases"], "cases")
        XCTAssertGreaterThanOrEqual(cases.count, 3)
        for v in cases {
            let c = try J.object(v, "case")
            let name = try J.string(c["name"], "name")
            var section = c
            section["latent_channels"] = c["channels"]
            let proj = try XCTUnwrap(PreviewProjection.parse(section))
            let floats = { (k: String) in try J.doubles(c[k], k).map { Float($0) } }
            let fHat = Tensor(floats: try floats("f_hat"), shape: try J.ints(c["f_hat_shape"], "shape"))
            var outputs = ["f_hat": fHat]
            if !J.isNull(c["e_last"]) {
                outputs = ["e_last": Tensor(floats: try floats("e_last"), shape: try J.ints(c["e_last_shape"], "shape"))]
            }
            let latent = try XCTUnwrap(PreviewProjection.scaleLatent(outputs: outputs, env: ["f_hat": fHat]))
            let grid = try proj.rgbGrid(latent)
            let want = try floats("rgb_grid")
            XCTAssertEqual(grid.count, want.count)
            for k in want.indices { XCTAssertEqual(grid[k], want[k], accuracy: 1e-5, "\(name) rgb[\(k)]") }
            let size = try J.int(c["size"], "size")
            let rgba = try proj.toRGBA(latent, size: size)
            let wantRGBA = try J.ints(c["rgba"], "rgba")
            XCTAssertEqual(rgba.count, wantRGBA.count)
            for k in rgba.indices { XCTAssertLessThanOrEqual(abs(Int(rgba[k]) - wantRGBA[k]), 1, "\(name) rgba[\(k)]") }
        }
    }

    func testManifestPreviewSectionIsOptionalAndChecked() throws {
        XCTAssertNil(try PreviewProjection.parse(nil))
        let json = { (s: String) in try J.object(J.parse(Data(s.utf8)), "preview") }
        let good = try json(#"{"latent_channels": 2, "weight": [[1, 0], [0, 1], [0.5, 0.5]], "bias": [0, 0, 0]}"#)
        XCTAssertEqual(try PreviewProjection.parse(good)?.channels, 2)
        var bad = try json(#"{"latent_channels": 2, "weight": [[1, 0], [0, 1]], "bias": [0, 0, 0]}"#)
        XCTAssertThrowsError(try PreviewProjection.parse(bad))
        bad = try json(#"{"latent_channels": 2, "weight": [[1, 0], [0, 1], [0.5, 0.5]], "bias": [0, "x", 0]}"#)
        XCTAssertThrowsError(try PreviewProjection.parse(bad))
        bad = try json(#"{"latent_channels": 0, "weight": [[1, 0], [0, 1], [0.5, 0.5]], "bias": [0, 0, 0]}"#)
        XCTAssertThrowsError(try PreviewProjection.parse(bad))
        let proj = try XCTUnwrap(PreviewProjection.parse(good))
        XCTAssertThrowsError(try proj.rgbGrid(Tensor(floats: [0, 0, 0], shape: [1, 3, 1, 1])))
        var m = TestFiles.manifestJSON()
        XCTAssertNil(try Manifest.parse(m).preview)
        m["preview"] = bad
        XCTAssertThrowsError(try Manifest.parse(m))
    }
}
