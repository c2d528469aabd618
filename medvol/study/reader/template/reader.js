// medvol reader study page: plain JavaScript, no network. State lives in localStorage under
// "medvol-reader/<study>/<reader>" and is written after every change, so a reload (or a crash)
// resumes at the same pair with the same choice, difficulty and timer.
(function () {
  "use strict";
  var study = JSON.parse(document.getElementById("study-data").textContent);
  var PREFIX = "medvol-reader/" + study.study + "/";
  var CURRENT = PREFIX + "current";
  // Single-image mode (visual Turing test): one image, the left button answers "real" and the
  // right one "synthetic"; the pair modes answer with the side chosen.
  var SINGLE = study.mode === "single";
  var SIDES = ["left", "right"];
  var CHOICES = SINGLE ? ["real", "synthetic"] : SIDES;
  var UNIT = SINGLE ? "Image" : "Pair";
  var state = null;  // {reader, role, years, started, answers: [...], pending: {...} | null}

  function $(id) { return document.getElementById(id); }
  function show(id) {
    ["start-screen", "trial-screen", "done-screen"].forEach(function (s) { $(s).hidden = (s !== id); });
    $("progress-wrap").hidden = (id === "start-screen");
  }
  function storageKey(reader) { return PREFIX + "reader/" + reader; }
  function save() {
    localStorage.setItem(storageKey(state.reader), JSON.stringify(state));
    localStorage.setItem(CURRENT, state.reader);
  }
  function load(reader) {
    var text = localStorage.getItem(storageKey(reader));
    if (!text) { return null; }
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function start() {
    var reader = $("reader-id").value.trim();
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(reader)) {
      $("start-error").textContent = "Reader id: 1 to 64 letters, digits, _ . or -";
      return;
    }
    state = load(reader);
    if (!state) {
      if (!$("reader-role").value) { $("start-error").textContent = "Please choose your role."; return; }
      state = {reader: reader, role: $("reader-role").value, years: $("reader-years").value,
               started: new Date().toISOString(), answers: [], pending: null};
    }
    $("start-error").textContent = "";
    save();
    render();
  }

  function answered(pair) {
    return state.answers.some(function (a) { return a.pair === pair; });
  }
  function nextPair() {
    for (var i = 0; i < study.pairs.length; i++) {
      if (!answered(study.pairs[i].pair)) { return study.pairs[i]; }
    }
    return null;
  }

  function render() {
    var pair = nextPair();
    var done = state.answers.length;
    $("progress").max = study.pairs.length;
    $("progress").value = done;
    $("progress-text").textContent = pair ? UNIT + " " + (done + 1) + " of " + study.pairs.length
                                          : study.pairs.length + " of " + study.pairs.length + " done";
    if (!pair) { finish(); return; }
    if (!state.pending || state.pending.pair !== pair.pair) {
      state.pending = {pair: pair.pair, choice: null, difficulty: null, startedAt: null};
      save();
    }
    // A 2D study's images have no plane ("2d"): the question alone.
    $("question").textContent = study.question + (pair.plane === "2d" ? "" : " (" + pair.plane + ")");
    var loaded = 0;
    function onLoad() {
      loaded += 1;
      // The clock starts once both images are on screen (kept across reloads).
      if (loaded === (SINGLE ? 1 : 2) && state.pending.startedAt === null) { state.pending.startedAt = Date.now(); save(); }
    }
    (SINGLE ? ["left"] : SIDES).forEach(function (side) {
      var img = $("img-" + side);
      img.onload = onLoad;
      img.src = SINGLE ? pair.image : pair[side];
    });
    show("trial-screen");
    paint();
  }

  function paint() {
    var p = state.pending;
    SIDES.forEach(function (side, i) {
      if (!SINGLE) { $("img-" + side).classList.toggle("chosen", p.choice === side); }
      $("choose-" + side).classList.toggle("chosen", p.choice === CHOICES[i]);
    });
    document.querySelectorAll("input[name=difficulty]").forEach(function (r) {
      r.checked = (p.difficulty !== null && Number(r.value) === p.difficulty);
    });
    $("next").disabled = !(p.choice && p.difficulty);
  }

  function choose(side) {
    if (!state || !state.pending || $("trial-screen").hidden) { return; }
    state.pending.choice = CHOICES[SIDES.indexOf(side)]; save(); paint();
  }
  function rate(value) {
    if (!state || !state.pending || $("trial-screen").hidden) { return; }
    state.pending.difficulty = value; save(); paint();
  }
  function submit() {
    var p = state && state.pending;
    if (!p || !p.choice || !p.difficulty || $("trial-screen").hidden) { return; }
    var started = p.startedAt === null ? Date.now() : p.startedAt;
    state.answers.push({pair: p.pair, choice: p.choice, difficulty: p.difficulty,
                        seconds: Math.round((Date.now() - started) / 10) / 100,
                        answered: new Date().toISOString()});
    state.pending = null;
    save();
    render();
  }

  function csvField(text) {
    text = String(text);
    return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  function csvText() {
    var rows = ["reader,pair,choice,difficulty,seconds"];
    state.answers.forEach(function (a) {
      rows.push([state.reader, a.pair, a.choice, a.difficulty, a.seconds.toFixed(2)].map(csvField).join(","));
    });
    return rows.join("\n") + "\n";
  }
  function jsonText() {
    return JSON.stringify({study: study.study, mode: study.mode, reader: state.reader,
                           experience: {role: state.role, years: state.years === "" ? null : Number(state.years)},
                           started: state.started, user_agent: navigator.userAgent,
                           answers: state.answers}, null, 1);
  }
  function download(text, type, name) {
    var url = URL.createObjectURL(new Blob([text], {type: type}));
    var a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.appendChild(a); a.click(); document.body.removeChild(a);
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  }
  function finish() {
    $("csv-text").value = csvText();
    show("done-screen");
  }

  $("start").addEventListener("click", start);
  $("reader-id").addEventListener("keydown", function (e) { if (e.key === "Enter") { start(); } });
  $("choose-left").addEventListener("click", function () { choose("left"); });
  $("choose-right").addEventListener("click", function () { choose("right"); });
  if (SINGLE) {
    $("intro").textContent = "You will see single images, one at a time. For each image say whether it is a " +
      "real scan or a synthetic (generated) one, then how sure you are. Answers are saved in this browser as " +
      "you go; closing or reloading the page loses nothing. At the end, export your answers and send the " +
      "files to the study organiser.";
    $("img-left").alt = "image";
    $("img-right").parentNode.replaceChild(document.createElement("span"), $("img-right"));
    $("choose-left").innerHTML = "Real <kbd>&larr;</kbd>";
    $("choose-right").innerHTML = "Synthetic <kbd>&rarr;</kbd>";
    $("likert-question").textContent = "How sure are you?";
    ["1 a guess", "2 unsure", "3 fairly sure", "4 sure", "5 certain"].forEach(function (text, i) {
      document.querySelectorAll(".likert-text")[i].textContent = text;
    });
    $("hint").innerHTML = "Keys: <kbd>&larr;</kbd> real, <kbd>&rarr;</kbd> synthetic, <kbd>1</kbd>&ndash;" +
      "<kbd>5</kbd> how sure, <kbd>Enter</kbd> next. There is no going back.";
    $("done-title").textContent = "Thank you: all images answered.";
  } else {
    $("img-left").addEventListener("click", function () { choose("left"); });
    $("img-right").addEventListener("click", function () { choose("right"); });
  }
  document.querySelectorAll("input[name=difficulty]").forEach(function (r) {
    r.addEventListener("change", function () { rate(Number(r.value)); });
  });
  $("next").addEventListener("click", submit);
  $("export-csv").addEventListener("click", function () {
    download(csvText(), "text/csv", "answers_" + state.reader + ".csv");
  });
  $("export-json").addEventListener("click", function () {
    download(jsonText(), "application/json", "answers_" + state.reader + ".json");
  });
  $("new-reader").addEventListener("click", function () {
    localStorage.removeItem(CURRENT);
    state = null;
    $("reader-id").value = ""; $("reader-role").value = ""; $("reader-years").value = "";
    show("start-screen");
  });
  document.addEventListener("keydown", function (e) {
    if (e.target && e.target.tagName === "INPUT" && e.target.type !== "radio") { return; }
    if (e.key === "ArrowLeft") { choose("left"); e.preventDefault(); }
    else if (e.key === "ArrowRight") { choose("right"); e.preventDefault(); }
    else if (/^[1-5]$/.test(e.key)) { rate(Number(e.key)); }
    else if (e.key === "Enter") { submit(); }
  });

  // Resume the reader who was answering when the page was closed or reloaded.
  var current = localStorage.getItem(CURRENT);
  if (current && load(current)) { state = load(current); render(); } else { show("start-screen"); }
})();
