import Foundation

/// The on-device benchmark test (ios_demo/BenchmarkTests) and its host, `python -m benchmarks.ios`.
/// The host sets `TEST_RUNNER_HART_*` variables (xcodebuild passes them to the test process with the
/// `TEST_RUNNER_` prefix removed) and cuts the result out of the xcodebuild log: the JSON on one line
/// between two marker lines (`Benchmark.emit`).
public struct BenchmarkRequest: Equatable {
    public static let prompt = "a lighthouse at dusk"  // the app's and the Android harness's settings
    public static let seed: Int64 = 7
    public static let cfg: Float = 4.5
    public static let warmup = 1

    /// HART_BENCHMARK_RUNS: timed generations (default 3, as the app's Benchmark button).
    public var runs = 3
    /// HART_BUNDLE_DIR: a bundle folder the test process can read (a host path works on a simulator);
    /// nil means the `BenchmarkBundle` folder inside the test bundle.
    public var bundleDir: String?
    /// HART_BUNDLE_NAME: the target name written to the JSON (the host's bundle folder name).
    public var bundleName: String?

    public init() {}

    /// Reads the variables above; a value that does not parse is an error naming the variable.
    public init(environment env: [String: String]) throws {
        if let s = env["HART_BENCHMARK_RUNS"] {
            guard let n = Int(s), n >= 1 else { throw PipelineError("HART_BENCHMARK_RUNS=\(s): expected an integer >= 1") }
            runs = n
        }
        bundleDir = env["HART_BUNDLE_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        bundleName = env["HART_BUNDLE_NAME"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

extension Benchmark {
    public static let beginMarker = "HART_BENCHMARK_JSON_BEGIN"
    public static let endMarker = "HART_BENCHMARK_JSON_END"

    /// Begin marker, the result as one line of JSON (sorted keys), end marker; each on its own line.
    public static func framed(_ result: [String: Any]) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
        return "\(beginMarker)\n\(String(decoding: data, as: UTF8.self))\n\(endMarker)\n"
    }

    /// Writes a newline and `framed(result)` in one write, after flushing what print() buffered, so
    /// the marker lines start a line and buffered output does not land between them.
    public static func emit(_ result: [String: Any], to handle: FileHandle = .standardOutput) throws {
        let text = try "\n" + framed(result)
        fflush(stdout)
        handle.write(Data(text.utf8))
    }
}
