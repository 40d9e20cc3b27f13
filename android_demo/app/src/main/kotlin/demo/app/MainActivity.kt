package demo.app

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.Image
import androidx.compose.foundation.background
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Box
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.layout.width
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.text.KeyboardOptions
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.FilterQuality
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.res.colorResource
import androidx.compose.ui.res.dimensionResource
import androidx.compose.ui.res.stringResource
import androidx.compose.ui.text.input.KeyboardType
import androidx.compose.ui.unit.dp
import org.hartmobile.demo.R

/**
 * One screen: prompt, seed, cfg, Generate / Cancel, a preview updated after every scale (the
 * latent through the manifest's preview projection, or its token map without one, then the
 * decoded image), "Verify bundle" and "Benchmark".
 * `adb shell am start -n org.hartmobile.demo/demo.app.MainActivity --ez benchmark true --ei runs 5`
 * starts a benchmark without touching the screen.
 */
class MainActivity : ComponentActivity() {
    private val vm: DemoViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        if (savedInstanceState == null && intent.getBooleanExtra("benchmark", false)) {
            vm.benchmark(intent.getIntExtra("runs", 3))
        }
        setContent {
            MaterialTheme {
                Surface(modifier = Modifier.fillMaxSize()) {
                    DemoScreen(vm)
                }
            }
        }
    }
}

@Composable
fun DemoScreen(vm: DemoViewModel) {
    val s by vm.state.collectAsState()
    Column(
        modifier =
            Modifier
                .fillMaxSize()
                .verticalScroll(rememberScrollState())
                .padding(dimensionResource(R.dimen.screen_padding)),
        verticalArrangement = Arrangement.spacedBy(8.dp),
    ) {
        OutlinedTextField(
            value = s.prompt,
            onValueChange = vm::setPrompt,
            label = { Text(stringResource(R.string.prompt_label)) },
            modifier = Modifier.fillMaxWidth(),
            enabled = !s.running,
        )
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            OutlinedTextField(
                value = s.seed,
                onValueChange = vm::setSeed,
                label = { Text(stringResource(R.string.seed_label)) },
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number),
                modifier = Modifier.width(150.dp),
                enabled = !s.running,
            )
            OutlinedTextField(
                value = s.cfg,
                onValueChange = vm::setCfg,
                label = { Text(stringResource(R.string.cfg_label)) },
                keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Decimal),
                modifier = Modifier.width(150.dp),
                enabled = !s.running,
            )
        }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            if (s.running) {
                Button(onClick = vm::cancel) { Text(stringResource(R.string.cancel)) }
            } else {
                Button(onClick = vm::generate) { Text(stringResource(R.string.generate)) }
            }
            OutlinedButton(onClick = vm::verify, enabled = !s.running) { Text(stringResource(R.string.verify)) }
            OutlinedButton(onClick = { vm.benchmark() }, enabled = !s.running) { Text(stringResource(R.string.benchmark)) }
        }
        Box(
            modifier =
                Modifier
                    .size(dimensionResource(R.dimen.preview_size))
                    .background(colorResource(R.color.preview_background)),
            contentAlignment = Alignment.Center,
        ) {
            s.preview?.let {
                Image(
                    bitmap = it.asImageBitmap(),
                    contentDescription = s.prompt,
                    filterQuality = FilterQuality.None,
                    modifier = Modifier.fillMaxSize(),
                )
            }
        }
        Text(s.status)
        for (c in s.checks) {
            Text(
                text = c.toString(),
                color = colorResource(if (c.passed) R.color.status_ok else R.color.status_fail),
            )
        }
    }
}
