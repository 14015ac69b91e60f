// lrkc's command line. Exit codes: 0 success, 1 a problem in the user's input (reported as
// diagnostics), 2 an internal error (a bug in lrkc).
import { Command, CommanderError } from "commander";
// Each command's module is imported when the command runs: `lrkc build` need not load the trainer,
// the data loaders, tokenizers or export (their start-up is part of every build's time).
import { buildDevices, emitKinds, type BuildOptions, type EmitKind } from "./build.js";
import { compiling } from "./jit.js";
import { deviceChoices as devices, parseMaxBinding } from "./target.js";
import type { EvalCommandOptions } from "./eval.js";
import type { ExportCommandOptions } from "./export.js";
import type { GenerateCommandOptions } from "./generate.js";

/** `lrkc build`'s options as commander gives them (strings, before they are checked). */
type BuildArguments = Omit<BuildOptions, "emit" | "maxBinding"> & {
  emit: string;
  maxBinding?: string;
};

function program(setCode: (code: number) => void): Command {
  const cli = new Command("lrkc")
    .description("lrk: compile and run low-rank training programs written in .lrk")
    .version("0.1.0")
    .showHelpAfterError("(run `lrkc --help` for usage)")
    .exitOverride();

  cli
    .command("check")
    .description("check .lrk files for errors without running anything")
    .argument("<files...>", ".lrk files to check")
    .option("--json", "print diagnostics as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ lrkc check examples/lora_finetune.lrk\n  $ lrkc check --json examples/*.lrk stdlib/*.lrk",
    )
    .action(async (files: string[], opts: { json?: boolean }) => {
      const { checkCommand } = await import("./check.js");
      setCode(compiling(() => checkCommand(files, opts)));
    });

  cli
    .command("fmt")
    .description("format .lrk files (prints to stdout unless --write or --check)")
    .argument("<files...>", ".lrk files to format")
    .option("--write", "rewrite the files in place")
    .option("--check", "exit 1 if any file is not formatted; change nothing")
    .option("--json", "print diagnostics as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ lrkc fmt examples/mlp.lrk            # print the formatted file\n  $ lrkc fmt --write examples/*.lrk       # format in place\n  $ lrkc fmt --check examples/*.lrk       # for CI: fail if anything would change",
    )
    .action(async (files: string[], opts: { write?: boolean; check?: boolean; json?: boolean }) => {
      if (opts.write && opts.check) {
        process.stderr.write("error: --write and --check cannot be used together\n");
        setCode(1);
        return;
      }
      const { fmtCommand } = await import("./fmt.js");
      setCode(compiling(() => fmtCommand(files, opts)));
    });

  cli
    .command("build")
    .description("compile a program and show a stage of the result")
    .argument("<file>", "the .lrk program")
    .option("--emit <what>", `what to show: ${emitKinds.join(", ")}`, "params")
    .option("--train <name>", "which train block, when the file has several")
    .option(
      "--out <dir>",
      "with --emit plan or wgsl: write plan.json and one .wgsl file per kernel there",
    )
    .option(
      "--device <device>",
      `with --emit plan or wgsl: plan for ${buildDevices.join(", ")} (auto: this machine's WebGPU adapter, exactly as \`lrkc train\` runs it; portable: any adapter, WebGPU's default limits)`,
      "auto",
    )
    .option(
      "--no-autotune",
      "with --emit plan or wgsl: default matmul parameters (as `lrkc train --no-autotune`)",
    )
    .option(
      "--frozen-f16",
      "store frozen weights as f16 (as `lrkc train --frozen-f16`): --emit memory and plan count 2 bytes each",
    )
    .option(
      "--max-binding <bytes>",
      "with --emit memory, plan or wgsl: plan for storage bindings of at most this many bytes (`64MiB`; as `lrkc train --max-binding`): larger tensors are bound in chunks",
    )
    .option("--json", "print diagnostics as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ lrkc build examples/mlp.lrk --emit plan                # the kernels of a training step, in dispatch order\n  $ lrkc build examples/mlp.lrk --emit wgsl --out plan/    # plan.json and the WGSL of every kernel\n  $ lrkc build examples/lora_finetune.lrk --emit params   # every parameter: shape, trainable or frozen, which rule placed it\n  $ lrkc build examples/galore_pretrain.lrk --emit memory  # bytes of weights, gradients, optimizer state, activations\n  $ lrkc build examples/mlp.lrk --emit ir                 # the training step as tensor IR\n  $ lrkc build examples/tiny_lm_pretrain.lrk --emit ast",
    )
    .action(async (file: string, opts: BuildArguments) => {
      if (!(emitKinds as readonly string[]).includes(opts.emit)) {
        process.stderr.write(
          `error: --emit must be one of ${emitKinds.join(", ")} (got \`${opts.emit}\`)\n`,
        );
        setCode(1);
        return;
      }
      if (!(buildDevices as readonly string[]).includes(opts.device ?? "auto")) {
        process.stderr.write(
          `error: --device must be one of ${buildDevices.join(", ")} (got \`${opts.device}\`)\n`,
        );
        setCode(1);
        return;
      }
      const maxBinding =
        opts.maxBinding !== undefined ? parseMaxBinding(opts.maxBinding) : undefined;
      if (typeof maxBinding === "object") {
        process.stderr.write(`error: ${maxBinding.error}\n`);
        setCode(1);
        return;
      }
      // commander's text is replaced by the checked number (or left out)
      const { maxBinding: _text, ...rest } = opts;
      const { buildCommand } = await import("./build.js");
      const options = {
        ...rest,
        emit: opts.emit as EmitKind,
        ...(maxBinding !== undefined ? { maxBinding } : {}),
      };
      setCode(await compiling(() => buildCommand(file, options)));
    });

  cli
    .command("train")
    .description("train a program's train block, printing progress and writing the final weights")
    .argument("<file>", "the .lrk program")
    .option("--train <name>", "which train block, when the file has several")
    .option("--steps <n>", "override the number of steps")
    .option("--batch <n>", "override the batch size")
    .option(
      "--device <device>",
      `where to run: ${devices.join(", ")} (auto: WebGPU if an adapter is found, else the CPU reference interpreter; cpu64 runs it in float64)`,
      "auto",
    )
    .option(
      "--out <dir>",
      "run folder: metrics, checkpoints, weights, curves (default: runs/<train name>)",
    )
    .option("--resume", "continue from the run folder's checkpoint, exactly as if never stopped")
    .option("--init <file>", "start from these weights (safetensors) instead of the block's `init`")
    .option(
      "--init-adapters <path>",
      "start the adapters from a PEFT adapter folder or an adapters.safetensors (instead of the block's `init_adapters`)",
    )
    .option("--force", "replace the run the run folder holds (without it, training there refuses)")
    .option(
      "--frozen-f16",
      "store frozen weights as f16 on the device (half their memory; each value rounded once) where it has shader-f16",
    )
    .option(
      "--max-binding <bytes>",
      "plan for storage bindings of at most this many bytes (`64MiB`: a smaller device's maxStorageBufferBindingSize); larger tensors are bound in chunks",
    )
    .option(
      "--no-autotune",
      "use default matmul parameters instead of timing candidates (choices are cached in ~/.cache/lrk)",
    )
    .option("--json", "print diagnostics as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ lrkc train examples/mlp.lrk --device cpu\n  $ lrkc train examples/tiny_lm_pretrain.lrk --steps 50 --out runs/try",
    )
    .action(
      async (
        file: string,
        opts: {
          train?: string;
          steps?: string;
          batch?: string;
          device: string;
          out?: string;
          init?: string;
          initAdapters?: string;
          force?: boolean;
          frozenF16?: boolean;
          maxBinding?: string;
          json?: boolean;
        },
      ) => {
        setCode(await (await import("./train.js")).trainCommand(file, opts));
      },
    );

  cli
    .command("eval")
    .description(
      "evaluate a train block's model with given weights: held-out loss, and accuracy for arithmetic data",
    )
    .argument("<file>", "the .lrk program")
    .option("--train <name>", "which train block, when the file has several")
    .option("--weights <file>", "parameters by path (a run's final.safetensors or checkpoint)")
    .option("--data <name>", "a `data` declaration of the file to evaluate on (its valid split)")
    .option(
      "--init-adapters <path>",
      "the adapters' values: a PEFT adapter folder or an adapters.safetensors (instead of the block's `init_adapters`)",
    )
    .option("--batch <n>", "override the batch size")
    .option("--batches <n>", "full batches to evaluate", "8")
    .option("--show <n>", "print n held-out predictions beside their targets")
    .option(
      "--frozen-f16",
      "store frozen weights as f16 on the device (half their memory; each value rounded once) where it has shader-f16",
    )
    .option("--device <device>", `where to run: ${devices.join(", ")}`, "auto")
    .option("--no-autotune", "use default matmul parameters instead of timing candidates")
    .option("--json", "print the result (and diagnostics) as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ lrkc eval examples/lora_finetune.lrk --weights runs/lora_finetune/final.safetensors\n  $ lrkc eval examples/lora_finetune.lrk --weights runs/lora_finetune/final.safetensors --data add   # what the fine-tune forgot",
    )
    .action(async (file: string, opts: EvalCommandOptions) => {
      setCode(await (await import("./eval.js")).evalCommand(file, opts));
    });

  cli
    .command("export")
    .description(
      "write a run's adapters as a Hugging Face PEFT adapter folder, or its model merged as a Hugging Face checkpoint folder",
    )
    .argument("<run-or-weights>", "a run folder (runs/NAME) or its final.safetensors")
    .option(
      "--peft <dir>",
      "write adapter_config.json + adapter_model.safetensors (LoRA, DoRA, AdaLoRA)",
    )
    .option("--merged <dir>", "write config.json + model.safetensors with every adapter merged")
    .option("--program <file>", "the .lrk program (default: the one the run recorded)")
    .option("--train <name>", "which train block (default: the one the run recorded)")
    .option("--json", "print diagnostics as JSON on stdout")
    .addHelpText(
      "after",
      "\nExamples:\n  $ lrkc export runs/tune --peft out/adapter\n  $ lrkc export runs/tune/final.safetensors --merged out/merged",
    )
    .action(async (input: string, opts: ExportCommandOptions) => {
      setCode(await (await import("./export.js")).exportCommand(input, opts));
    });

  cli
    .command("generate")
    .description("generate text from a train block's model (greedy at --temperature 0)")
    .argument("<file>", "the .lrk program")
    .option("--train <name>", "which train block, when the file has several")
    .option("--weights <file>", "parameters by path (default: the block's `init`)")
    .option("--prompt <text>", "the text to continue (read with the model's tokenizer)")
    .option("--ids <ids>", "the prompt as token ids, in place of --prompt (`3,14,15`)")
    .option("--chat", "send --prompt as a user message through the tokenizer's chat template")
    .option(
      "--tokenizer <folder>",
      "a Hugging Face tokenizer folder (default: the data's or init's)",
    )
    .option("--max-tokens <n>", "tokens to generate at most", "32")
    .option("--temperature <t>", "0 is greedy; higher is more random", "0")
    .option("--top-p <p>", "sample from the smallest set of tokens with this probability", "1")
    .option("--seed <n>", "seed of the draws", "0")
    .option("--device <device>", `where to run: ${devices.join(", ")}`, "auto")
    .option("--no-autotune", "use default matmul parameters instead of timing candidates")
    .option(
      "--no-kv-cache",
      "recompute the whole prefix for every token instead of keeping keys and values (slower; for comparison)",
    )
    .option("--json", "print the result (and diagnostics) as JSON on stdout")
    .addHelpText(
      "after",
      '\nExamples:\n  $ lrkc generate tune.lrk --weights runs/tune/final.safetensors --prompt "Once upon a time"\n  $ lrkc generate tune.lrk --ids 3,14,15,9 --max-tokens 8 --device cpu',
    )
    .action(async (file: string, opts: GenerateCommandOptions) => {
      setCode(await (await import("./generate.js")).generateCommand(file, opts));
    });

  cli
    .command("devices")
    .description(
      "show the WebGPU adapter lrk would run on (and say what to install if there is none)",
    )
    .option("--json", "print as JSON")
    .addHelpText("after", "\nExamples:\n  $ lrkc devices\n  $ lrkc devices --json")
    .action(async (opts: { json?: boolean }) =>
      setCode(await (await import("./devices.js")).devicesCommand(opts)),
    );

  cli.addHelpText(
    "after",
    "\nExamples:\n  $ lrkc check examples/*.lrk\n  $ lrkc fmt --write examples/tiny_lm.lrk\n\nRun `lrkc help <command>` for a command's options.",
  );
  return cli;
}

export async function main(argv: string[]): Promise<number> {
  let code = 0;
  try {
    await program((c) => (code = c)).parseAsync(argv);
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here with exit code 0; usage errors with 1.
      return e.exitCode === 0 ? 0 : 1;
    }
    const err = e as Error;
    process.stderr.write(
      `internal error: ${err?.message ?? String(e)}\n` +
        "This is a bug in lrkc, not in your program. Please report it with the input that caused it.\n" +
        (process.env["LRK_DEBUG"]
          ? `${err?.stack ?? ""}\n`
          : "Set LRK_DEBUG=1 to print the stack trace.\n"),
    );
    return 2;
  }
}
