import Foundation

/// Benchmark mode: `warmup` untimed generations, then `runs` timed ones. Same JSON as the Android
/// app: schema_version, device, backend, stages {name: {runs_ms}}, total_ms, plus one `targets`
/// entry in the shared hart-mobile/benchmark schema (docs/benchmark-schema.md).
public enum Benchmark {
    public static let schema = "hart-mobile/benchmark"
    public static let schemaVersion = 1

    public static func run(
        _ pipeline: Pipeline, prompt: String, seed: Int64, cfg: Float, runs: Int, warmup: Int, device: String,
        os: String = ProcessInfo.processInfo.operatingSystemVersionString, bundleName: String? = nil,
        cancel: CancelToken? = nil, now: Date = Date()
    ) throws -> [String: Any] {
        precondition(runs >= 1 && warmup >= 0, "runs must be >= 1 and warmup >= 0")
        for _ in 0..<warmup { _ = try pipeline.generate(prompt: prompt, seed: seed, cfg: cfg, cancel: cancel) }
        var order = [String]()
        var stages = [String: [Double]]()
        var totals = [Double]()
        for _ in 0..<runs {
            let g = try pipeline.generate(prompt: prompt, seed: seed, cfg: cfg, cancel: cancel)
            for (k, v) in g.timingsMs {
                if stages[k] == nil { order.append(k) }
                stages[k, default: []].append(round3(v))
            }
            totals.append(round3(g.timingsMs.reduce(0) { $0 + $1.1 }))
        }
        let name = bundleName ?? pipeline.manifest.model
        let iso = ISO8601DateFormatter().string(from: now)
        return [
            "schema": schema,
            "schema_version": schemaVersion,
            "created": iso,
            "device": device,
            "backend": pipeline.manifest.backend,
            "stages": Dictionary(uniqueKeysWithValues: order.map { ($0, ["runs_ms": stages[$0]!]) }),
            "stage_order": order,
            "total_ms": totals,
            "machine": ["device": device, "os": os, "cores": ProcessInfo.processInfo.activeProcessorCount],
            "settings": [
                "runs": runs, "warmup": warmup, "prompt": prompt, "seed": seed, "cfg": Double(cfg),
                "config": pipeline.manifest.model,
            ],
            "baseline": NSNull(),
            "targets": [
                [
                    "name": name, "backend": pipeline.manifest.backend, "bundle": name,
                    "stages": Dictionary(uniqueKeysWithValues: order.map { ($0, summarize(stages[$0]!)) }),
                    "end_to_end": summarize(totals),
                ] as [String: Any]
            ],
        ]
    }

    /// min / median / p90 (nearest rank, as benchmarks/schema.py) + the raw runs.
    public static func summarize(_ runs: [Double]) -> [String: Any] {
        precondition(!runs.isEmpty)
        let s = runs.sorted()
        let n = s.count
        let median = n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
        let rank = Int((0.9 * Double(n) + 0.5).rounded(.toNearestOrEven))  // Python round(): half to even
        let p90 = s[min(n - 1, max(0, rank - 1))]
        return ["min_ms": s[0], "median_ms": median, "p90_ms": p90, "runs_ms": runs]
    }

    public static func jsonData(_ result: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: result, options: [.prettyPrinted, .sortedKeys])
    }

    static func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
}
