import Foundation

/// Small helpers over JSONSerialization output ([String: Any], [Any], NSNumber, String, NSNull).
enum J {
    static func parse(_ data: Data) throws -> Any {
        try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
    }

    static func object(_ v: Any?, _ what: String) throws -> [String: Any] {
        guard let o = v as? [String: Any] else { throw ManifestError("\(what) must be an object") }
        return o
    }

    static func array(_ v: Any?, _ what: String) throws -> [Any] {
        guard let a = v as? [Any] else { throw ManifestError("\(what) must be a list") }
        return a
    }

    static func string(_ v: Any?, _ what: String) throws -> String {
        guard let s = v as? String else { throw ManifestError("\(what) must be a string") }
        return s
    }

    static func int(_ v: Any?, _ what: String) throws -> Int {
        guard let n = v as? NSNumber, !(v is String) else { throw ManifestError("\(what) must be an integer") }
        return n.intValue
    }

    static func int64(_ v: Any?, _ what: String) throws -> Int64 {
        guard let n = v as? NSNumber else { throw ManifestError("\(what) must be an integer") }
        return n.int64Value
    }

    static func double(_ v: Any?, _ what: String) throws -> Double {
        guard let n = v as? NSNumber else { throw ManifestError("\(what) must be a number") }
        return n.doubleValue
    }

    static func bool(_ v: Any?, default d: Bool) -> Bool {
        guard let n = v as? NSNumber else { return d }
        return n.boolValue
    }

    static func isNull(_ v: Any?) -> Bool { v == nil || v is NSNull }

    static func doubles(_ v: Any?, _ what: String) throws -> [Double] {
        try array(v, what).map { try double($0, what) }
    }

    static func ints(_ v: Any?, _ what: String) throws -> [Int] {
        try array(v, what).map { try int($0, what) }
    }

    static func data(_ obj: Any) throws -> Data {
        try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
    }
}
