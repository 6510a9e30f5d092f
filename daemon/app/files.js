// Import and export. An import is checked first (a dry run: every row's
// action, or why it is refused, with row and column), then run with a live
// progress bar from the job's events, then undone if it was wrong. An
// export runs as a job with progress and ends in a download.

import {
  fill,
  api,
  request,
  el,
  show,
  loading,
  projectNav,
  followJob,
  jobProgress,
  undo,
  undoSummary,
  toast,
} from "./ui.js";

const ACTION = { create: "Create", update: "Update", unchanged: "Unchanged", rejected: "Rejected" };

/** The type to send a file as: by its name, else let the daemon tell. */
function fileType(file) {
  const name = file.name.toLowerCase();
  if (name.endsWith(".csv")) return "text/csv";
  if (name.endsWith(".json")) return "application/json";
  return file.type || "application/octet-stream";
}

export async function filesScreen(pid) {
  loading("import and export");
  const project = await api("GET", `/v1/projects/${pid}`);

  // ---- import ----
  const file = el("input", { id: "import-file", type: "file", accept: ".csv,.json,text/csv,application/json" });
  const check = el("button", { type: "submit", id: "import-check" }, "Check the file");
  const run = el("button", { type: "button", id: "import-run", hidden: true }, "Import");
  const importMessage = el("p", { class: "field-message", role: "alert", hidden: true });
  const importBox = el("div", { id: "import-result", "aria-live": "polite" });

  function fail(e) {
    importMessage.textContent = e.message;
    importMessage.hidden = false;
  }

  /** Starts an import (dry or real) of the chosen file and follows it. */
  async function start(dryRun) {
    importMessage.hidden = true;
    const f = file.files[0];
    if (!f) return fail(new Error("Choose a CSV or JSON file first."));
    const progress = jobProgress(dryRun ? "Checking the file" : "Importing");
    fill(importBox, progress.box);
    const { data } = await request("POST", `/v1/projects/${pid}/imports?dry_run=${dryRun}`, f, fileType(f));
    const job = await followJob(pid, data.job_id, progress.update);
    progress.update(job);
    if (job.state !== "completed") throw new Error(job.message || `The import ${job.state}.`);
    return job.result;
  }

  function report(result, dryRun) {
    const rows = result.rows || [];
    const counts = `${result.created} to create, ${result.updated} to update, ${result.unchanged} unchanged, ${result.rejected} rejected`;
    const summary = dryRun
      ? `Checked: ${counts}. Nothing is written yet.`
      : `Imported: ${counts.replace("to create", "created").replace("to update", "updated")}.`;
    const interesting = rows.filter((r) => r.action !== "unchanged");
    const table = el(
      "table",
      { class: "results", id: "import-rows" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ["Row", "Tag", "Action", "Column", "Message"].map((h) => el("th", { scope: "col" }, h)),
        ),
      ),
      el(
        "tbody",
        {},
        interesting.slice(0, 500).flatMap((r) => {
          const errors = r.errors && r.errors.length ? r.errors : [null];
          return errors.map((e) =>
            el(
              "tr",
              { class: r.action === "rejected" ? "bad" : "" },
              el("td", { "data-label": "Row" }, r.row),
              el("td", { "data-label": "Tag" }, r.tag || ""),
              el("td", { "data-label": "Action" }, ACTION[r.action] || r.action),
              e && e.column ? el("td", { "data-label": "Column" }, e.column) : el("td", { class: "empty" }),
              e ? el("td", { "data-label": "Message" }, e.message) : el("td", { class: "empty" }),
            ),
          );
        }),
      ),
    );
    return [
      el("p", { class: result.rejected ? "notice error" : "notice", id: "import-summary" }, summary),
      interesting.length ? el("div", { class: "table-wrap" }, table) : null,
      interesting.length > 500 ? el("p", { class: "status" }, `and ${interesting.length - 500} more rows.`) : null,
    ];
  }

  const importForm = el(
    "form",
    {
      class: "card",
      "aria-labelledby": "import-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        check.disabled = true;
        run.hidden = true;
        try {
          const result = await start(true);
          fill(importBox, ...report(result, true));
          const rows = result.created + result.updated;
          run.textContent = `Import ${rows} ${rows === 1 ? "row" : "rows"}`;
          run.hidden = rows === 0;
        } catch (e) {
          importBox.replaceChildren();
          fail(e);
        } finally {
          check.disabled = false;
        }
      },
    },
    el("h2", { id: "import-title" }, "Import components"),
    el(
      "p",
      { class: "status" },
      "A CSV or JSON file with drawing, tag, kind and template columns (DWG, TAG, TYPE, QTY, AREA, SYSTEM, TEST PKG are understood too). It is checked before anything is written.",
    ),
    el("label", { for: "import-file" }, "File"),
    file,
    el("div", { class: "steps" }, check, run),
    importMessage,
    importBox,
  );
  file.addEventListener("change", () => {
    run.hidden = true;
    importBox.replaceChildren();
  });
  run.addEventListener("click", async () => {
    run.hidden = true;
    check.disabled = true;
    try {
      const result = await start(false);
      const undoButton = result.operation_id
        ? el(
            "button",
            {
              type: "button",
              id: "import-undo",
              class: "quiet-dark",
              onclick: async () => {
                undoButton.disabled = true;
                try {
                  const r = await undo(pid, result.operation_id);
                  undoButton.replaceWith(el("p", { class: "notice", id: "import-undone" }, undoSummary(r)));
                } catch (e) {
                  fail(e);
                  undoButton.disabled = false;
                }
              },
            },
            "Undo this import",
          )
        : null;
      fill(importBox, ...report(result, false), undoButton);
    } catch (e) {
      fail(e);
    } finally {
      check.disabled = false;
    }
  });

  // ---- export ----
  const format = el(
    "select",
    { id: "export-format" },
    el("option", { value: "csv" }, "CSV"),
    el("option", { value: "xlsx" }, "Excel (XLSX)"),
    el("option", { value: "json" }, "JSON"),
  );
  const exportButton = el("button", { type: "submit", id: "export-run" }, "Export");
  const exportBox = el("div", { id: "export-result", "aria-live": "polite" });
  const exportForm = el(
    "form",
    {
      class: "card",
      "aria-labelledby": "export-title",
      onsubmit: async (ev) => {
        ev.preventDefault();
        exportButton.disabled = true;
        const progress = jobProgress("Exporting");
        fill(exportBox, progress.box);
        try {
          const { job_id } = await api("POST", `/v1/projects/${pid}/exports`, { format: format.value });
          const job = await followJob(pid, job_id, progress.update);
          progress.update(job);
          if (job.state !== "completed") throw new Error(job.message || `The export ${job.state}.`);
          fill(
            exportBox,
            el(
              "a",
              { class: "button", id: "export-download", href: `/v1/jobs/${job_id}/download`, download: "" },
              `Download the ${format.value.toUpperCase()} file`,
            ),
          );
          toast("The export is ready to download.");
        } catch (e) {
          fill(exportBox, el("p", { class: "field-message", role: "alert" }, e.message));
        } finally {
          exportButton.disabled = false;
        }
      },
    },
    el("h2", { id: "export-title" }, "Export"),
    el("p", { class: "status" }, "Every component with its milestones, as a file for the office."),
    el(
      "div",
      { class: "form-row" },
      el("div", {}, el("label", { for: "export-format" }, "Format"), format),
      exportButton,
    ),
    exportBox,
  );

  show(projectNav(pid, "/files"), el("h1", {}, `Import & export · ${project.name}`), importForm, exportForm);
}
