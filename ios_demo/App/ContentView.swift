import DemoCore
import SwiftUI

/// One screen: prompt, seed, cfg, Generate / Cancel, a preview updated after every scale (the scale's
/// latent through the manifest's preview projection, or its token map without one, then the decoded
/// image), "Verify bundle" and "Benchmark".
struct ContentView: View {
    @EnvironmentObject var model: DemoModel

    var body: some View {
        ScrollView {
            VStack(alignment: .leading, spacing: 12) {
                TextField("Prompt", text: $model.prompt, axis: .vertical)
                    .textFieldStyle(.roundedBorder)
                    .disabled(model.running)
                HStack {
                    TextField("Seed", text: $model.seed)
                        .textFieldStyle(.roundedBorder)
                        #if os(iOS)
                            .keyboardType(.numberPad)
                        #endif
                    TextField("CFG", text: $model.cfg)
                        .textFieldStyle(.roundedBorder)
                        #if os(iOS)
                            .keyboardType(.decimalPad)
                        #endif
                }
                .disabled(model.running)
                HStack {
                    if model.running {
                        Button("Cancel", role: .cancel) { model.cancel() }
                            .buttonStyle(.borderedProminent)
                    } else {
                        Button("Generate") { model.generate() }
                            .buttonStyle(.borderedProminent)
                    }
                    Button("Verify bundle") { model.verify() }
                        .disabled(model.running)
                    Button("Benchmark") { model.benchmark() }
                        .disabled(model.running)
                }
                ZStack {
                    Rectangle().fill(Color(white: 0.13))
                    if let img = model.preview {
                        Image(decorative: img, scale: 1)
                            .resizable()
                            .interpolation(.none)
                            .aspectRatio(contentMode: .fit)
                    }
                }
                .frame(width: 256, height: 256)
                Text(model.status)
                    .font(.callout)
                ForEach(Array(model.checks.enumerated()), id: \.offset) { _, check in
                    Text(check.description)
                        .font(.caption)
                        .foregroundStyle(check.passed ? Color.green : Color.red)
                }
            }
            .padding()
        }
    }
}

#Preview {
    ContentView().environmentObject(DemoModel())
}
