package demo.core

/** Element types of the method contract (model/stages.py TensorSpec.dtype). */
enum class DType(
    val jsonName: String,
) {
    FLOAT32("float32"),
    FLOAT16("float16"),
    INT64("int64"),
    ;

    val isFloat: Boolean get() = this != INT64

    companion object {
        fun parse(name: String): DType =
            entries.firstOrNull { it.jsonName == name }
                ?: throw ManifestException("unsupported dtype '$name' (expected float32, float16 or int64)")
    }
}

/**
 * A dense row-major tensor. Float dtypes keep their values in [floats] (float16 values are held as
 * float32 on the host; runners convert at the boundary), int64 in [longs].
 */
class Tensor private constructor(
    val shape: IntArray,
    val dtype: DType,
    val floats: FloatArray?,
    val longs: LongArray?,
) {
    val numel: Int get() = shape.fold(1) { a, b -> a * b }

    init {
        val n = numel
        val size = floats?.size ?: longs!!.size
        require(size == n) { "data has $size elements, shape ${shape.contentToString()} needs $n" }
    }

    fun floatData(): FloatArray = floats ?: throw IllegalStateException("tensor is ${dtype.jsonName}, not float")

    fun longData(): LongArray = longs ?: throw IllegalStateException("tensor is ${dtype.jsonName}, not int64")

    /** Element i widened to Double (exact for float32 and for |int64| < 2^53). */
    fun valueAt(i: Int): Double = floats?.get(i)?.toDouble() ?: longs!![i].toDouble()

    fun shapeString(): String = shape.joinToString(", ", "[", "]")

    override fun toString(): String = "Tensor(${dtype.jsonName}, ${shapeString()})"

    companion object {
        fun ofFloats(
            shape: IntArray,
            data: FloatArray,
            dtype: DType = DType.FLOAT32,
        ): Tensor {
            require(dtype.isFloat) { "ofFloats needs a float dtype" }
            return Tensor(shape.copyOf(), dtype, data, null)
        }

        fun ofLongs(
            shape: IntArray,
            data: LongArray,
        ): Tensor = Tensor(shape.copyOf(), DType.INT64, null, data)

        fun zeros(
            shape: IntArray,
            dtype: DType,
        ): Tensor {
            val n = shape.fold(1) { a, b -> a * b }
            return if (dtype.isFloat) ofFloats(shape, FloatArray(n), dtype) else ofLongs(shape, LongArray(n))
        }
    }
}
