import Foundation

@testable import DemoCore

/// Repository files the tests read (docs/ golden vectors). Found by walking up from this file.
enum TestFiles {
    static let root: URL = {
        if let r = ProcessInfo.processInfo.environment["REPO_ROOT"] { return URL(fileURLWithPath: r) }
        var d = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while d.path != "/" {
            if FileManager.default.fileExists(atPath: d.appendingPathComponent("docs/app_golden.json").path) { return d }
            d = d.deletingLastPathComponent()
        }
        fatalError("docs/app_golden.json not found above \(#filePath); set REPO_ROOT")
    }()

    static func data(_ path: String) throws -> Data { try Data(contentsOf: root.appendingPathComponent(path)) }

    static let golden: AppGolden = try! AppGolden(data: data("docs/app_golden.json"))

    /// manifest.json plus its digest (manifest.sha256), for tests whose subject is not the digest itself.
    static func writeManifest(_ dir: URL, _ data: Data) throws {
        try data.write(to: dir.appendingPathComponent(ModelBundle.manifestName))
        try Data("\(SHA256.hex(data))  manifest.json\n".utf8).write(to: dir.appendingPathComponent(ModelBundle.digestName))
    }

    /// A fresh mutable copy of the golden manifest JSON.
    static func manifestJSON() -> [String: Any] {
        let d = try! JSONSerialization.data(withJSONObject: golden.root["manifest"]!)
        return try! JSONSerialization.jsonObject(with: d) as! [String: Any]
    }
}
