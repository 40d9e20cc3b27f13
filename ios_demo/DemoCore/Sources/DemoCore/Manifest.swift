import Foundation

public struct ManifestError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// Where the pipeline takes an input from (model/stages.py TensorSpec.source).
public enum Source: String, Sendable { case env, tokenizer, user, rng, zeros }

public enum Dist: String, Sendable { case uniform, normal }

public struct RngSpec: Sendable {
    public let dist: Dist
    public let streams: [UInt64]
}

public struct TensorSpec: Sendable {
    public let name: String
    public let shape: [Int]
    public let dtype: DType
    public let source: Source
    public let rng: RngSpec?
    /// Backend feature name / dtype when the export renamed or retyped it (Core ML `coreml_name`, `coreml_dtype`).
    public let backendName: String?
    public let backendDType: String?

    public var numel: Int { shape.reduce(1, *) }

    public init(
        name: String, shape: [Int], dtype: DType, source: Source, rng: RngSpec?,
        backendName: String? = nil, backendDType: String? = nil
    ) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.source = source
        self.rng = rng
        self.backendName = backendName
        self.backendDType = backendDType
    }
}

public struct MethodSpec: Sendable {
    public let name: String
    public let component: String
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    /// Program / model package holding this method, when the manifest names one.
    public let file: String?
    /// Core ML model package folder holding this method (export/coreml: `package`; `file` is a file inside it).
    public let package: String?
    /// Function of a multifunction Core ML model (MLModelConfiguration.functionName).
    public let function: String?
    /// Method name inside the program (export/ bundles: `entry`); defaults to `name`.
    public let entry: String
    /// Names of the Core ML states (KV cache) the method reads and writes; empty when stateless.
    public let states: [String]
}

public struct FileEntry: Sendable {
    public let path: String
    public let sha256: String
    public let size: Int64
}

public struct TokenizerInfo: Sendable {
    public let file: String?
    public let maxTokens: Int
    public let padToken: String
}

/// A bundle manifest: schema version, the method contract in call order, artifact files with their
/// sha256 and size, and the tokenizer. `parse` validates the wiring statically.
public struct Manifest {
    public static let format = "hart-mobile-bundle"
    public static let supportedSchemaVersions: Set<Int> = [1]
    /// Compared with a bundle's min_runtime_version (export/bundle.py MIN_RUNTIME_VERSION).
    public static let runtimeVersion = 1
    static let tokenizerInputs: Set<String> = ["token_ids", "context_mask"]
    static let userInputs: Set<String> = ["cfg"]

    public let schemaVersion: Int
    public let model: String
    public let backend: String
    public let methods: [MethodSpec]
    public let files: [FileEntry]
    public let tokenizer: TokenizerInfo
    public let defaultCfg: Float
    public let imageSize: Int?
    public let computeUnits: String?
    /// golden/index.json path when the bundle carries eager reference tensors (export/bundle.py).
    public let goldenIndex: String?
    /// Parity limits for the golden check (parity.thresholds.golden); fp32 defaults.
    public let goldenLimits: [String: Double]
    /// The per-scale preview projection (manifest `preview`, model/preview.py), nil in older bundles.
    public var preview: PreviewProjection? = nil

    public func method(_ name: String) throws -> MethodSpec {
        guard let m = methods.first(where: { $0.name == name }) else { throw ManifestError("no method '\(name)'") }
        return m
    }

    public static func parse(data: Data) throws -> Manifest {
        try parse(J.object(J.parse(data), "manifest"))
    }

    public static func parse(_ o: [String: Any]) throws -> Manifest {
        let version: Int
        if o["schema_version"] != nil {
            version = try J.int(o["schema_version"], "schema_version")
        } else if (o["format"] as? String) == format, o["version"] != nil {
            version = try J.int(o["version"], "version")
        } else {
            throw ManifestError("manifest has no schema_version (nor format '\(format)' with a version)")
        }
        guard supportedSchemaVersions.contains(version) else {
            throw ManifestError(
                "manifest schema_version \(version) is not supported by this app (supported: "
                    + "\(supportedSchemaVersions.sorted())); update the app or re-export the bundle")
        }
        let minRuntime = (o["min_runtime_version"] as? NSNumber)?.intValue ?? 1
        if minRuntime > runtimeVersion {
            throw ManifestError("bundle needs app runtime version >= \(minRuntime), this app is \(runtimeVersion); update the app")
        }
        guard let methodsJson = o["methods"] as? [Any] else { throw ManifestError("manifest has no methods list") }
        let methods = try methodsJson.map { try parseMethod(J.object($0, "method")) }
        if let order = o["call_order"] as? [String], order != methods.map(\.name) {
            throw ManifestError("methods \(methods.map(\.name)) do not follow call_order \(order)")
        }
        var limits: [String: Double] = ["token_agreement": 1.0, "sqnr_db": 60.0]
        let thresholds = (o["parity"] as? [String: Any])?["thresholds"] as? [String: Any]
        for (k, v) in (thresholds?["golden"] as? [String: Any]) ?? [:] { limits[k] = (v as? NSNumber)?.doubleValue }
        let sampler = o["sampler"] as? [String: Any]
        let modelObj = o["model"] as? [String: Any]
        func modelField(_ key: String) -> Any? { o[key] ?? modelObj?[key] }
        let backendValue = o["backend"]
        let backend = (backendValue as? String) ?? ((backendValue as? [String: Any])?["name"] as? String) ?? "unknown"
        let coreml = o["coreml"] as? [String: Any]
        let units =
            (o["compute_units"] as? String) ?? ((backendValue as? [String: Any])?["compute_units"] as? String)
            ?? (coreml?["compute_units"] as? String)
        let m = Manifest(
            schemaVersion: version,
            model: (o["model"] as? String) ?? (modelObj?["name"] as? String) ?? "unknown",
            backend: backend,
            methods: methods,
            files: try parseFiles(o["files"]),
            tokenizer: try parseTokenizer(o["tokenizer"]),
            defaultCfg: Float(((modelField("default_cfg") ?? sampler?["cfg_default"]) as? NSNumber)?.doubleValue ?? 4.5),
            imageSize: (modelField("image_size") as? NSNumber)?.intValue,
            computeUnits: units,
            goldenIndex: (o["golden"] as? [String: Any])?["index"] as? String,
            goldenLimits: limits)
        var checked = m
        checked.preview = try PreviewProjection.parse(o["preview"])
        try validate(checked)
        return checked
    }

    static func parseTokenizer(_ t: Any?) throws -> TokenizerInfo {
        if J.isNull(t) { return TokenizerInfo(file: nil, maxTokens: 300, padToken: "<|endoftext|>") }
        if let s = t as? String { return TokenizerInfo(file: s, maxTokens: 300, padToken: "<|endoftext|>") }
        let o = try J.object(t, "tokenizer")
        return TokenizerInfo(
            file: (o["file"] as? String) ?? (o["path"] as? String),
            maxTokens: (o["max_tokens"] as? NSNumber)?.intValue ?? 300,
            padToken: (o["pad_token"] as? String) ?? "<|endoftext|>")
    }

    static func fileSize(_ path: String, _ e: [String: Any]) throws -> Int64 {
        if let n = e["size"] as? NSNumber { return n.int64Value }
        if let n = e["bytes"] as? NSNumber { return n.int64Value }
        throw ManifestError("file \(path) has no size")
    }

    static func parseFiles(_ f: Any?) throws -> [FileEntry] {
        if J.isNull(f) { return [] }
        if let a = f as? [Any] {
            return try a.map {
                let e = try J.object($0, "file entry")
                let path = try J.string(e["path"], "file path")
                return FileEntry(path: path, sha256: try J.string(e["sha256"], "\(path) sha256"), size: try fileSize(path, e))
            }
        }
        if let o = f as? [String: Any] {
            return try o.keys.sorted().map { path in
                let e = try J.object(o[path], "file \(path)")
                return FileEntry(path: path, sha256: try J.string(e["sha256"], "\(path) sha256"), size: try fileSize(path, e))
            }
        }
        throw ManifestError("files must be a list or an object")
    }

    static func parseMethod(_ o: [String: Any]) throws -> MethodSpec {
        let name = try J.string(o["name"], "method name")
        func specs(_ key: String) throws -> [TensorSpec] {
            guard let a = o[key] as? [Any] else { throw ManifestError("method \(name) has no '\(key)' list") }
            // export/coreml lists Core ML feature names / dtypes in parallel `coreml_inputs` / `coreml_outputs`.
            var backend = [String: [String: Any]]()
            for e in (o["coreml_" + key] as? [[String: Any]]) ?? [] {
                if let n = e["name"] as? String { backend[n] = e }
            }
            return try a.map {
                var t = try J.object($0, "\(name).\(key)")
                if let b = backend[(t["name"] as? String) ?? ""] {
                    t["coreml_name"] = t["coreml_name"] ?? b["coreml_name"]
                    t["coreml_dtype"] = t["coreml_dtype"] ?? b["coreml_dtype"]
                }
                return try parseTensor(name, t)
            }
        }
        let states = (o["states"] as? [Any])?.compactMap { ($0 as? [String: Any])?["name"] as? String ?? ($0 as? String) } ?? []
        return MethodSpec(
            name: name, component: (o["component"] as? String) ?? "", inputs: try specs("inputs"),
            outputs: try specs("outputs"), file: (o["file"] as? String) ?? (o["program"] as? String),
            package: o["package"] as? String, function: o["function"] as? String, entry: (o["entry"] as? String) ?? name, states: states)
    }

    static func parseTensor(_ method: String, _ o: [String: Any]) throws -> TensorSpec {
        let name = try J.string(o["name"], "\(method) tensor name")
        let shape = try J.ints(o["shape"], "\(method).\(name) shape")
        if shape.contains(where: { $0 <= 0 }) { throw ManifestError("\(method).\(name): shape \(shape) has a non-positive dim") }
        let sourceName = (o["source"] as? String) ?? "env"
        guard let source = Source(rawValue: sourceName) else {
            throw ManifestError("\(method).\(name): unknown source '\(sourceName)'")
        }
        var rng: RngSpec?
        if source == .rng {
            guard let r = o["rng"] as? [String: Any] else { throw ManifestError("\(method).\(name): source rng without an rng object") }
            let d = try J.string(r["dist"], "\(method).\(name) rng dist")
            guard let dist = Dist(rawValue: d) else { throw ManifestError("\(method).\(name): unknown rng dist '\(d)'") }
            let streams = try J.array(r["streams"], "\(method).\(name) streams").map { v -> UInt64 in
                let s = try J.int64(v, "stream")
                if s < 0 { throw ManifestError("\(method).\(name): negative rng stream") }
                return UInt64(s)
            }
            rng = RngSpec(dist: dist, streams: streams)
        }
        return TensorSpec(
            name: name, shape: shape, dtype: try DType.parse(try J.string(o["dtype"], "\(method).\(name) dtype")),
            source: source, rng: rng,
            backendName: (o["coreml_name"] as? String) ?? (o["onnx_name"] as? String),
            backendDType: o["coreml_dtype"] as? String)
    }

    static func validate(_ m: Manifest) throws {
        if m.methods.isEmpty { throw ManifestError("manifest lists no methods") }
        var seen = Set<String>()
        for meth in m.methods where !seen.insert(meth.name).inserted {
            throw ManifestError("duplicate method name: \(meth.name)")
        }
        var produced = [String: TensorSpec]()
        for meth in m.methods {
            for s in meth.inputs {
                switch s.source {
                case .env:
                    guard let p = produced[s.name] else {
                        throw ManifestError("\(meth.name): input '\(s.name)' is not produced by any earlier method")
                    }
                    if p.shape != s.shape || p.dtype != s.dtype {
                        throw ManifestError(
                            "\(meth.name): input '\(s.name)' \(s.shape) \(s.dtype.rawValue) does not match the earlier output "
                                + "\(p.shape) \(p.dtype.rawValue)")
                    }
                case .tokenizer:
                    if !tokenizerInputs.contains(s.name) { throw ManifestError("\(meth.name): unknown tokenizer input '\(s.name)'") }
                case .user:
                    if !userInputs.contains(s.name) { throw ManifestError("\(meth.name): unknown user input '\(s.name)'") }
                case .rng:
                    if s.rng!.streams.count != s.shape[0] {
                        throw ManifestError(
                            "\(meth.name).\(s.name): \(s.rng!.streams.count) rng streams for leading dim \(s.shape[0])")
                    }
                    if !s.dtype.isFloat { throw ManifestError("\(meth.name).\(s.name): rng input must be a float dtype") }
                case .zeros:
                    break
                }
            }
            for s in meth.outputs { produced[s.name] = s }
        }
        if produced["image"] == nil { throw ManifestError("no method outputs 'image'") }
        for f in m.files {
            let hex = f.sha256.unicodeScalars.allSatisfy { ("0"..."9").contains($0) || ("a"..."f").contains($0) }
            if f.sha256.count != 64 || !hex { throw ManifestError("file \(f.path): sha256 must be 64 lowercase hex digits") }
            if f.size < 0 { throw ManifestError("file \(f.path): negative size") }
            if f.path.hasPrefix("/") || f.path.split(separator: "/").contains("..") {
                throw ManifestError("file \(f.path): path must stay inside the bundle")
            }
        }
    }
}

/// A bundle folder: manifest.json (checked against its digest, manifest.sha256) plus the files it
/// lists, each checked for size and sha256. The digest covers manifest.json's exact bytes and the
/// manifest lists every other file's sha256, so together they cover the whole bundle
/// (docs/bundle-format.md).
public struct ModelBundle {
    public static let manifestName = "manifest.json"
    public static let digestName = "manifest.sha256"
    public let dir: URL
    public let manifest: Manifest

    public func url(_ path: String) -> URL { dir.appendingPathComponent(path) }

    public static func open(_ dir: URL, verifyFiles: Bool = true) throws -> ModelBundle {
        let manifest = try Manifest.parse(data: readManifest(dir))
        if verifyFiles {
            let problems = verify(dir, manifest)
            if !problems.isEmpty {
                throw ManifestError("bundle \(dir.path) failed verification:\n" + problems.joined(separator: "\n"))
            }
        }
        return ModelBundle(dir: dir, manifest: manifest)
    }

    /// manifest.json's bytes, checked against manifest.sha256 (one read: the bytes hashed are the bytes parsed).
    public static func readManifest(_ dir: URL) throws -> Data {
        for name in [manifestName, digestName] where isSymlink(dir.appendingPathComponent(name)) {
            throw ManifestError(symlinkMessage(name))
        }
        let mf = dir.appendingPathComponent(manifestName)
        let df = dir.appendingPathComponent(digestName)
        guard FileManager.default.fileExists(atPath: mf.path) else { throw ManifestError("\(dir.path) has no \(manifestName)") }
        guard FileManager.default.fileExists(atPath: df.path) else {
            throw ManifestError("\(dir.path) has no \(digestName) (the bundle digest); re-export the bundle")
        }
        let data = try Data(contentsOf: mf)
        try checkDigest(manifest: data, digestFile: Data(contentsOf: df))
        return data
    }

    /// Throws unless `digestFile` is exactly `<sha256 of manifest, lowercase hex>  manifest.json\n`.
    public static func checkDigest(manifest: Data, digestFile: Data) throws {
        let bytes = [UInt8](digestFile)
        let suffix = Array("  manifest.json\n".utf8)
        let isHex = { (b: UInt8) in (48...57).contains(b) || (97...102).contains(b) }
        guard bytes.count == 64 + suffix.count, bytes[..<64].allSatisfy(isHex), Array(bytes[64...]) == suffix else {
            throw ManifestError("\(digestName) is not one line '<64 hex digits>  manifest.json'; re-export the bundle")
        }
        guard String(decoding: bytes[..<64], as: UTF8.self) == SHA256.hex(manifest) else {
            throw ManifestError("\(manifestName) was edited after export (digest mismatch with \(digestName)); re-export the bundle")
        }
    }

    static func symlinkMessage(_ path: String) -> String {
        "\(path) is a symlink; bundle files must be regular files inside the bundle (copy the bundle, do not link it)"
    }

    static func isSymlink(_ url: URL) -> Bool {
        let attrs = try? FileManager.default.attributesOfItem(atPath: url.path)  // lstat: does not follow the link
        return (attrs?[.type] as? FileAttributeType) == .typeSymbolicLink
    }

    /// The first symlink among `path` and its parent folders inside `dir`, or nil.
    static func symlinkOnPath(_ dir: URL, _ path: String) -> String? {
        var prefix = [Substring]()
        for part in path.split(separator: "/") {
            prefix.append(part)
            let p = prefix.joined(separator: "/")
            if isSymlink(dir.appendingPathComponent(p)) { return p }
        }
        return nil
    }

    /// Every problem found; empty when the bundle is intact.
    public static func verify(_ dir: URL, _ manifest: Manifest) -> [String] {
        var problems = [String]()
        let listed = Set(manifest.files.map(\.path))
        for f in manifest.files {
            let url = dir.appendingPathComponent(f.path)
            if let link = symlinkOnPath(dir, f.path) {
                problems.append(symlinkMessage(link))
                continue
            }
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: url.path),
                (attrs[.type] as? FileAttributeType) == .typeRegular
            else {
                problems.append("\(f.path): missing")
                continue
            }
            let size = (attrs[.size] as? NSNumber)?.int64Value ?? -1
            if size != f.size {
                problems.append("\(f.path): size \(size) != \(f.size) in the manifest")
                continue
            }
            do {
                let got = try SHA256.file(url)
                if got != f.sha256 { problems.append("\(f.path): sha256 \(got) != \(f.sha256) in the manifest") }
            } catch {
                problems.append("\(f.path): unreadable (\(error))")
            }
        }
        // A multifunction .mlpackage is a folder: its files are listed one by one under it.
        for p in Set(manifest.methods.compactMap(\.file)).sorted()
        where !listed.contains(p) && !listed.contains(where: { $0.hasPrefix(p + "/") }) {
            problems.append("\(p): used by a method but not listed in files (no sha256)")
        }
        if let tf = manifest.tokenizer.file, !listed.contains(tf) {
            problems.append("\(tf): tokenizer not listed in files (no sha256)")
        }
        return problems
    }

    /// The bundle's tokenizer.json; the built-in byte tokenizer only for the default model without one.
    public func promptEncoder() throws -> PromptEncoder {
        let t = manifest.tokenizer
        let tok: TextTokenizer
        if let f = t.file, FileManager.default.fileExists(atPath: url(f).path) {
            tok = try HfTokenizer(data: Data(contentsOf: url(f)))
        } else if manifest.model == "default" {
            tok = ByteTokenizer()
        } else {
            throw ManifestError("bundle has no tokenizer file (\(t.file ?? "none named"))")
        }
        return try PromptEncoder(tok, maxTokens: t.maxTokens, padToken: t.padToken)
    }
}
