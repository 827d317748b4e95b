// The admin reset's progress page (templates/admin/gallery/reset/progress.html): follows the job's status
// until it ends. A file, not an inline script: the pages' Content-Security-Policy runs no inline script.
(function () {
  const page = document.getElementById("reset-progress");
  const url = page.dataset.statusUrl;
  const set = (id, value) => {  // only a change: a live region would say an unchanged text again
    const element = document.getElementById(id);
    if (element.textContent !== String(value)) element.textContent = value;
  };
  async function poll() {
    const contact = document.getElementById("reset-contact");
    let job;
    try {
      const response = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (!response.ok) throw new Error("the server answered " + response.status);
      job = await response.json();  // a sign-in page or a proxy's error page is not JSON: caught below
    } catch (error) {
      // The reset goes on in its worker whatever this page sees: keep asking, and say so.
      contact.textContent = "No answer about the reset (" + error.message + "); asking again in 5 s. "
        + "If you were signed out, sign in again in another tab.";
      contact.hidden = false;
      setTimeout(poll, 5000);
      return;
    }
    contact.hidden = true;
    set("reset-state", job.state_label); set("reset-phase", job.phase);
    set("reset-deleted", job.deleted_images); set("reset-scanned", job.scanned); set("reset-total", job.total_files);
    set("reset-imported", job.imported); set("reset-duplicates", job.duplicates); set("reset-embedded", job.embedded);
    const bar = document.getElementById("reset-bar");
    bar.max = Math.max(job.total_files, 1); bar.value = job.scanned;
    set("reset-to-process", job.to_process);
    const processed = document.getElementById("reset-processed-bar");
    // Images added while the reset runs are processed with it: counted in to_process too.
    processed.max = Math.max(job.to_process, 1); processed.value = job.embedded;
    const list = document.getElementById("reset-rejected");
    list.replaceChildren(...(job.rejected.length ? job.rejected : [["none", ""]]).map(([name, reason]) => {
      const li = document.createElement("li"); li.textContent = reason ? name + ": " + reason : name; return li;
    }));
    const error = document.getElementById("reset-error"); error.hidden = !job.error; error.textContent = job.error;
    document.getElementById("reset-done").hidden = job.state !== "done";
    if (job.state === "queued" || job.state === "running") setTimeout(poll, 1500);
  }
  if (page.dataset.active === "true") setTimeout(poll, 1000);
})();
