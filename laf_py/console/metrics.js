// laf-py console: reading /_/metrics (Prometheus text format) and drawing small charts.
// No dependencies. Exposes window.LafMetrics = {parse, snapshot, compare, drawChart}.
"use strict";

(function () {
  // One sample line: name{label="value",...} number [timestamp]
  const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

  function unescape(value) {
    return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }

  // Text format -> [{name, labels, value}]
  function parse(text) {
    const samples = [];
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line || line[0] === "#") continue;
      const match = LINE.exec(line);
      if (!match) continue;
      const labels = {};
      if (match[2]) {
        for (const pair of match[2].matchAll(LABEL)) labels[pair[1]] = unescape(pair[2]);
      }
      const value = match[3] === "+Inf" ? Infinity : Number(match[3]);
      if (!Number.isNaN(value)) samples.push({ name: match[1], labels, value });
    }
    return samples;
  }

  // The numbers the console needs from one scrape: cumulative counters and gauges.
  function snapshot(samples, time) {
    const shot = {
      time, requests: 0, serverErrors: 0, functionErrors: 0, connections: null,
      online: null, messagesIn: 0, messagesOut: 0,
      functions: {}, // name -> {requests, serverErrors, errors, count, sum, buckets: {le: n}}
      buckets: {}, // all functions together: le -> n
    };
    const fn = (name) => (shot.functions[name] ||= {
      requests: 0, serverErrors: 0, errors: 0, count: 0, sum: 0, buckets: {},
    });
    for (const { name, labels, value } of samples) {
      switch (name) {
        case "laf_http_requests_total": {
          const f = fn(labels.function || "?");
          f.requests += value;
          shot.requests += value;
          if (String(labels.status || "").startsWith("5")) {
            f.serverErrors += value;
            shot.serverErrors += value;
          }
          break;
        }
        case "laf_function_errors_total":
          fn(labels.function || "?").errors += value;
          shot.functionErrors += value;
          break;
        case "laf_http_request_duration_seconds_bucket": {
          const f = fn(labels.function || "?");
          const le = labels.le;
          f.buckets[le] = (f.buckets[le] || 0) + value;
          shot.buckets[le] = (shot.buckets[le] || 0) + value;
          break;
        }
        case "laf_http_request_duration_seconds_count":
          fn(labels.function || "?").count += value;
          break;
        case "laf_http_request_duration_seconds_sum":
          fn(labels.function || "?").sum += value;
          break;
        case "laf_websocket_connections":
          shot.connections = (shot.connections || 0) + value;
          break;
        case "laf_online_users":
          shot.online = (shot.online || 0) + value;
          break;
        case "laf_websocket_messages_total":
          if (labels.direction === "in") shot.messagesIn += value;
          else shot.messagesOut += value;
          break;
        default:
      }
    }
    return shot;
  }

  // A counter's increase; a restarted server starts again from zero.
  function increase(now, before) {
    const delta = (now || 0) - (before || 0);
    return delta < 0 ? now || 0 : delta;
  }

  // Like PromQL's histogram_quantile over cumulative buckets {le: count}; seconds or null.
  function quantile(q, buckets) {
    const bounds = Object.keys(buckets)
      .map((le) => ({ le: le === "+Inf" ? Infinity : Number(le), n: buckets[le] }))
      .filter((b) => !Number.isNaN(b.le))
      .sort((a, b) => a.le - b.le);
    if (!bounds.length) return null;
    const total = bounds[bounds.length - 1].n;
    if (!(total > 0)) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const { le, n } of bounds) {
      if (n >= rank) {
        if (le === Infinity) return lower; // past the largest bound: its value is all we know
        const inside = n - below;
        return inside > 0 ? lower + (le - lower) * ((rank - below) / inside) : le;
      }
      lower = le;
      below = n;
    }
    return lower;
  }

  function bucketIncrease(now, before) {
    const out = {};
    for (const le of Object.keys(now)) out[le] = increase(now[le], (before || {})[le]);
    return out;
  }

  // What happened between two snapshots: rates, error share, percentiles, per function.
  function compare(now, before) {
    const seconds = Math.max((now.time - before.time) / 1000, 0.001);
    const requests = increase(now.requests, before.requests);
    const serverErrors = increase(now.serverErrors, before.serverErrors);
    const overall = bucketIncrease(now.buckets, before.buckets);
    const functions = {};
    for (const [name, f] of Object.entries(now.functions)) {
      const b = before.functions[name] || {};
      const buckets = bucketIncrease(f.buckets, b.buckets);
      const count = increase(f.requests, b.requests);
      functions[name] = {
        requests: count,
        rate: count / seconds,
        serverErrors: increase(f.serverErrors, b.serverErrors),
        errors: increase(f.errors, b.errors),
        p50: quantile(0.5, buckets),
        p99: quantile(0.99, buckets),
      };
    }
    return {
      seconds,
      rate: requests / seconds,
      errorRate: requests > 0 ? (100 * serverErrors) / requests : 0,
      p50: quantile(0.5, overall),
      p99: quantile(0.99, overall),
      functions,
    };
  }

  // A line chart of [{t, v}] on a canvas sized by CSS; v may be null (a gap).
  function drawChart(canvas, points, { unit = "", digits = 1, color = "#2563eb", axis = true } = {}) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const first = points.findIndex((p) => p.v !== null && Number.isFinite(p.v));
    points = first < 0 ? [] : points.slice(first); // start at the first number, not a gap
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const values = points.map((p) => p.v).filter((v) => v !== null && Number.isFinite(v));
    const top = Math.max(1e-9, ...values) * 1.15 || 1;
    const pad = axis ? 14 : 2;
    const left = 2;
    const span = Math.max(points.length - 1, 1);
    const x = (i) => left + ((width - left - 2) * i) / span;
    const y = (v) => height - pad - ((height - pad - 4) * v) / top;
    if (axis) {
      ctx.fillStyle = getComputedStyle(canvas).color || "#6b7480";
      ctx.font = "10px system-ui, sans-serif";
      ctx.fillText(`max ${format(Math.max(0, ...values), digits)}${unit}`, 4, 10);
      ctx.strokeStyle = "rgba(127,127,127,.25)";
      ctx.beginPath();
      ctx.moveTo(0, height - pad + 0.5);
      ctx.lineTo(width, height - pad + 0.5);
      ctx.stroke();
    }
    ctx.strokeStyle = color;
    ctx.fillStyle = color + "22";
    ctx.lineWidth = 1.5;
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        ctx.beginPath();
        run.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
        ctx.stroke();
        ctx.lineTo(run[run.length - 1][0], height - pad);
        ctx.lineTo(run[0][0], height - pad);
        ctx.closePath();
        ctx.fill();
      } else if (run.length === 1) {
        ctx.fillStyle = color;
        ctx.fillRect(run[0][0] - 1, run[0][1] - 1, 3, 3);
        ctx.fillStyle = color + "22";
      }
      run = [];
    };
    points.forEach((p, i) => {
      if (p.v === null || !Number.isFinite(p.v)) flush();
      else run.push([x(i), y(p.v)]);
    });
    flush();
  }

  function format(value, digits) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "–";
    return value >= 100 ? String(Math.round(value)) : value.toFixed(digits);
  }

  window.LafMetrics = { parse, snapshot, compare, quantile, drawChart, format };
})();
