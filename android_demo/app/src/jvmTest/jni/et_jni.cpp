// JNI bridge from the JVM stand-in org.pytorch.executorch.Module to the ExecuTorch 1.5.1 C++
// Module API (float32 / int64 tensors only). Built by android_demo/tools/jvm_bundle_run.sh against
// the pip wheel's headers and libexecutorch*.so; not part of the Android app.
#include <dlfcn.h>
#include <jni.h>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <memory>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::make_tensor_ptr;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {
std::string str(JNIEnv* env, jstring s) {
  const char* c = env->GetStringUTFChars(s, nullptr);
  std::string out(c);
  env->ReleaseStringUTFChars(s, c);
  return out;
}

void fail(JNIEnv* env, const std::string& msg) {
  env->ThrowNew(env->FindClass("java/lang/RuntimeException"), msg.c_str());
}
}  // namespace

// Kernel libraries the AAR links statically but the pip wheel ships as separate .so files (the LLM
// custom ops: llama::update_cache, llama::custom_sdpa); RTLD_GLOBAL so their kernels register in the
// same libexecutorch the Module uses.
extern "C" JNIEXPORT void JNICALL Java_org_pytorch_executorch_Module_nativeLoadLibrary(JNIEnv* env, jclass, jstring path) {
  if (dlopen(str(env, path).c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) fail(env, dlerror());
}

extern "C" JNIEXPORT jlong JNICALL Java_org_pytorch_executorch_Module_nativeLoad(
    JNIEnv* env, jclass, jstring path, jboolean share) {
  auto* m = new Module(str(env, path), Module::LoadMode::Mmap, nullptr, nullptr, nullptr, share == JNI_TRUE);
  if (m->load() != Error::Ok) {
    delete m;
    return 0;
  }
  return reinterpret_cast<jlong>(m);
}

extern "C" JNIEXPORT jint JNICALL Java_org_pytorch_executorch_Module_nativeLoadMethod(
    JNIEnv* env, jclass, jlong h, jstring method) {
  return static_cast<jint>(reinterpret_cast<Module*>(h)->load_method(str(env, method)));
}

extern "C" JNIEXPORT jobjectArray JNICALL Java_org_pytorch_executorch_Module_nativeExecute(
    JNIEnv* env, jclass, jlong h, jstring method, jobjectArray data, jobjectArray shapes) {
  auto* m = reinterpret_cast<Module*>(h);
  jclass floatArray = env->FindClass("[F");
  const jsize n = env->GetArrayLength(data);
  std::vector<TensorPtr> keep;
  std::vector<EValue> inputs;
  for (jsize i = 0; i < n; ++i) {
    jobject d = env->GetObjectArrayElement(data, i);
    auto sh = static_cast<jlongArray>(env->GetObjectArrayElement(shapes, i));
    const jsize rank = env->GetArrayLength(sh);
    std::vector<jlong> dims(rank);
    env->GetLongArrayRegion(sh, 0, rank, dims.data());
    std::vector<SizesType> sizes(dims.begin(), dims.end());
    const jsize len = env->GetArrayLength(static_cast<jarray>(d));
    if (env->IsInstanceOf(d, floatArray)) {
      std::vector<float> v(len);
      env->GetFloatArrayRegion(static_cast<jfloatArray>(d), 0, len, v.data());
      keep.push_back(make_tensor_ptr(std::move(sizes), std::move(v)));
    } else {
      std::vector<int64_t> v(len);
      env->GetLongArrayRegion(static_cast<jlongArray>(d), 0, len, reinterpret_cast<jlong*>(v.data()));
      keep.push_back(make_tensor_ptr(std::move(sizes), std::move(v)));
    }
    inputs.emplace_back(*keep.back());
  }
  const std::string name = str(env, method);
  auto result = m->execute(name, inputs);
  if (!result.ok()) {
    fail(env, "execute(" + name + ") failed with ExecuTorch error " + std::to_string(static_cast<int>(result.error())));
    return nullptr;
  }
  const auto& outs = result.get();
  jobjectArray arr = env->NewObjectArray(2 * static_cast<jsize>(outs.size()), env->FindClass("java/lang/Object"), nullptr);
  for (size_t k = 0; k < outs.size(); ++k) {
    if (!outs[k].isTensor()) {
      fail(env, name + ": output " + std::to_string(k) + " is not a tensor");
      return nullptr;
    }
    const auto& t = outs[k].toTensor();
    jlongArray s = env->NewLongArray(t.dim());
    for (jsize d = 0; d < t.dim(); ++d) {
      jlong v = t.size(d);
      env->SetLongArrayRegion(s, d, 1, &v);
    }
    const jsize numel = static_cast<jsize>(t.numel());
    jobject a;
    if (t.scalar_type() == ScalarType::Float) {
      auto fa = env->NewFloatArray(numel);
      env->SetFloatArrayRegion(fa, 0, numel, t.const_data_ptr<float>());
      a = fa;
    } else if (t.scalar_type() == ScalarType::Long) {
      auto la = env->NewLongArray(numel);
      env->SetLongArrayRegion(la, 0, numel, reinterpret_cast<const jlong*>(t.const_data_ptr<int64_t>()));
      a = la;
    } else {
      fail(env, name + ": output dtype " + std::to_string(static_cast<int>(t.scalar_type())) + " is not float32/int64");
      return nullptr;
    }
    env->SetObjectArrayElement(arr, static_cast<jsize>(2 * k), a);
    env->SetObjectArrayElement(arr, static_cast<jsize>(2 * k + 1), s);
  }
  return arr;
}

extern "C" JNIEXPORT void JNICALL Java_org_pytorch_executorch_Module_nativeDestroy(JNIEnv*, jclass, jlong h) {
  delete reinterpret_cast<Module*>(h);
}
