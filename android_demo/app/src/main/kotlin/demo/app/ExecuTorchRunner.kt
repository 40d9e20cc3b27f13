package demo.app

import demo.core.Bundle
import demo.core.DType
import demo.core.MethodRunner
import demo.core.Tensor
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.DType as EtDType
import org.pytorch.executorch.Tensor as EtTensor

/**
 * [MethodRunner] over ExecuTorch's Java API (org.pytorch:executorch-android). All methods of one
 * `.pte` run on one [Module], so they share the program's mutable buffers (the KV cache): the
 * export must use MemoryPlanningPass(share_mutable_buffers=True). No android.* imports: CI compiles
 * this file on a JVM against stand-ins of Module / EValue / Tensor with the AAR's signatures.
 */
class ExecuTorchRunner(
    private val bundle: Bundle,
    loader: (String) -> Module = { Module.load(it) },
) : MethodRunner,
    AutoCloseable {
    private val modules = LinkedHashMap<String, Module>()
    private val byMethod = HashMap<String, Module>()
    private val entries = HashMap<String, String>()

    init {
        val programs = bundle.manifest.programFiles().filter { it.endsWith(".pte") }
        for (m in bundle.manifest.methods) {
            val file =
                m.file ?: programs.singleOrNull()
                    ?: throw IllegalStateException("method ${m.name} names no file and the bundle has ${programs.size} .pte programs")
            val module = modules.getOrPut(file) { loader(bundle.file(file).absolutePath) }
            val rc = module.loadMethod(m.entry)
            check(rc == 0) { "loadMethod(${m.entry}) in $file failed with ExecuTorch error 0x${rc.toString(16)}" }
            byMethod[m.name] = module
            entries[m.name] = m.entry
        }
    }

    override fun run(
        method: String,
        inputs: List<Tensor>,
    ): List<Tensor> {
        val module = byMethod[method] ?: throw IllegalArgumentException("no program loaded for method $method")
        val outs = module.execute(entries.getValue(method), *inputs.map { toEValue(it) }.toTypedArray())
        return outs.map { fromEValue(it) }
    }

    override fun close() {
        modules.values.forEach { it.destroy() }
        modules.clear()
        byMethod.clear()
    }

    companion object {
        fun toEValue(t: Tensor): EValue {
            val shape = LongArray(t.shape.size) { t.shape[it].toLong() }
            val et =
                when (t.dtype) {
                    DType.FLOAT32 -> EtTensor.fromBlob(t.floatData(), shape)

                    DType.INT64 -> EtTensor.fromBlob(t.longData(), shape)

                    DType.FLOAT16 -> throw IllegalArgumentException(
                        "float16 method inputs are not supported by this runner; export float32 I/O",
                    )
                }
            return EValue.from(et)
        }

        fun fromEValue(e: EValue): Tensor {
            check(e.isTensor()) { "method returned a non-tensor value" }
            val t = e.toTensor()
            val shape = t.shape().map { it.toInt() }.toIntArray()
            return when (t.dtype()) {
                EtDType.FLOAT -> Tensor.ofFloats(shape, t.getDataAsFloatArray())
                EtDType.INT64 -> Tensor.ofLongs(shape, t.getDataAsLongArray())
                else -> throw IllegalStateException("unsupported output dtype ${t.dtype()} (expected FLOAT or INT64)")
            }
        }
    }
}
