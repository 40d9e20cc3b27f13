import DemoCore
import Foundation

let args = CommandLine.arguments
guard args.count == 2 else {
    FileHandle.standardError.write(Data("usage: bundle-check BUNDLE_DIR\n".utf8))
    exit(2)
}
let results = BundleCheck.run(URL(fileURLWithPath: args[1]))
for r in results { print(r) }
exit(results.allSatisfy(\.passed) ? 0 : 1)
