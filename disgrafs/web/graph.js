// A small force-directed file–tag graph on SVG: repulsion between all nodes, springs along
// edges, a pull towards the centre. Labels are text nodes, never markup.

const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 800;
const HEIGHT = 560;
const MARGIN = 24;
const TICKS = 300;
const LABEL_CHARS = 28;

function svg(name, attributes = {}) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  return element;
}

function shortLabel(label) {
  return label.length > LABEL_CHARS ? label.slice(0, LABEL_CHARS - 1) + "…" : label;
}

/** The graph view. `onActivate(node)` is called when a node is clicked or activated by key. */
export class ForceGraph {
  constructor(element, onActivate) {
    this.element = element;
    this.onActivate = onActivate;
    this.nodes = [];
    this.edges = [];
    this.positions = new Map();
    this.frame = 0;
    this.dragging = null;
    element.addEventListener("pointermove", (event) => this.drag(event));
    element.addEventListener("pointerup", () => this.endDrag());
    element.addEventListener("pointercancel", () => this.endDrag());
  }

  /**
   * Shows `nodes` ({id, kind: "file"|"tag", label, classes: [...]}) and `edges`
   * ({source, target, score}); nodes seen before keep their place.
   */
  setData(nodes, edges, emptyText) {
    const index = new Map(nodes.map((node, i) => [node.id, i]));
    this.nodes = nodes.map((node, i) => {
      const known = this.positions.get(node.id);
      const angle = (2 * Math.PI * i) / Math.max(nodes.length, 1);
      const radius = node.kind === "file" ? 120 : 220;
      return {
        ...node,
        x: known ? known.x : WIDTH / 2 + radius * Math.cos(angle),
        y: known ? known.y : HEIGHT / 2 + radius * Math.sin(angle),
        vx: 0,
        vy: 0,
        fixed: false,
      };
    });
    this.edges = edges
      .filter((edge) => index.has(edge.source) && index.has(edge.target))
      .map((edge) => ({ ...edge, a: index.get(edge.source), b: index.get(edge.target) }));
    this.build(emptyText);
    this.start(1);
  }

  build(emptyText) {
    const root = this.element;
    root.replaceChildren();
    if (this.nodes.length === 0) {
      const text = svg("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" });
      text.textContent = emptyText;
      root.append(text);
      return;
    }
    const edgeLayer = svg("g", { class: "edges" });
    const nodeLayer = svg("g", { class: "nodes" });
    for (const edge of this.edges) {
      edge.line = svg("line", { class: "edge", "stroke-width": 0.6 + 2 * edge.score });
      edgeLayer.append(edge.line);
    }
    for (const node of this.nodes) {
      const group = svg("g", {
        class: ["node", node.kind, ...node.classes].join(" "),
        "data-id": node.id,
        tabindex: 0,
        role: "button",
        "aria-label": `${node.kind} ${node.label}`,
      });
      const shape = node.kind === "file"
        ? svg("circle", { class: "shape", r: 9 })
        : svg("rect", { class: "shape", x: -6, y: -6, width: 12, height: 12, transform: "rotate(45)" });
      const title = svg("title");
      title.textContent = node.label;
      const label = svg("text", { x: 12, y: 4 });
      label.textContent = shortLabel(node.label);
      group.append(shape, title, label);
      group.addEventListener("pointerdown", (event) => this.beginDrag(event, node));
      group.addEventListener("click", () => {
        if (!node.moved) {
          this.onActivate(node);
        }
      });
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          this.onActivate(node);
        }
      });
      node.group = group;
      nodeLayer.append(group);
    }
    root.append(edgeLayer, nodeLayer);
    this.draw();
  }

  start(alpha) {
    this.alpha = alpha;
    this.ticks = 0;
    this.element.dataset.state = "running";
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => this.step());
    }
  }

  step() {
    this.frame = 0;
    for (let i = 0; i < 3 && this.ticks < TICKS; i += 1) {
      this.tick();
    }
    this.draw();
    if (this.ticks < TICKS || this.dragging) {
      this.frame = requestAnimationFrame(() => this.step());
    } else {
      this.element.dataset.state = "settled";
    }
  }

  tick() {
    const nodes = this.nodes;
    const alpha = this.alpha;
    for (let i = 0; i < nodes.length; i += 1) {
      for (let j = i + 1; j < nodes.length; j += 1) {
        const a = nodes[i];
        const b = nodes[j];
        let dx = b.x - a.x;
        let dy = b.y - a.y;
        if (dx === 0 && dy === 0) {
          dx = (j - i) * 0.1;
          dy = 0.1;
        }
        const distance2 = Math.max(dx * dx + dy * dy, 25);
        const force = (5000 * alpha) / distance2;
        const distance = Math.sqrt(distance2);
        a.vx -= (dx / distance) * force;
        a.vy -= (dy / distance) * force;
        b.vx += (dx / distance) * force;
        b.vy += (dy / distance) * force;
      }
    }
    for (const edge of this.edges) {
      const a = nodes[edge.a];
      const b = nodes[edge.b];
      const dx = b.x - a.x;
      const dy = b.y - a.y;
      const distance = Math.max(Math.sqrt(dx * dx + dy * dy), 1);
      const force = (distance - 90) * 0.04 * alpha;
      a.vx += (dx / distance) * force;
      a.vy += (dy / distance) * force;
      b.vx -= (dx / distance) * force;
      b.vy -= (dy / distance) * force;
    }
    // Keep the centre of mass in the middle of the view.
    const free = nodes.filter((node) => !node.fixed);
    if (free.length > 0) {
      const shiftX = WIDTH / 2 - free.reduce((sum, node) => sum + node.x, 0) / free.length;
      const shiftY = HEIGHT / 2 - free.reduce((sum, node) => sum + node.y, 0) / free.length;
      for (const node of free) {
        node.x += shiftX * 0.5 * alpha;
        node.y += shiftY * 0.5 * alpha;
      }
    }
    for (const node of nodes) {
      node.vx += (WIDTH / 2 - node.x) * 0.01 * alpha;
      node.vy += (HEIGHT / 2 - node.y) * 0.01 * alpha;
      if (!node.fixed) {
        node.x = Math.min(WIDTH - MARGIN, Math.max(MARGIN, node.x + node.vx));
        node.y = Math.min(HEIGHT - MARGIN, Math.max(MARGIN, node.y + node.vy));
      }
      node.vx *= 0.6;
      node.vy *= 0.6;
    }
    this.alpha *= 0.985;
    this.ticks += 1;
  }

  draw() {
    for (const edge of this.edges) {
      const a = this.nodes[edge.a];
      const b = this.nodes[edge.b];
      edge.line.setAttribute("x1", a.x.toFixed(1));
      edge.line.setAttribute("y1", a.y.toFixed(1));
      edge.line.setAttribute("x2", b.x.toFixed(1));
      edge.line.setAttribute("y2", b.y.toFixed(1));
    }
    for (const node of this.nodes) {
      node.group.setAttribute("transform", `translate(${node.x.toFixed(1)} ${node.y.toFixed(1)})`);
      this.positions.set(node.id, { x: node.x, y: node.y });
    }
  }

  point(event) {
    const matrix = this.element.getScreenCTM();
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    return { x: point.x, y: point.y };
  }

  beginDrag(event, node) {
    const start = this.point(event);
    this.dragging = { node, start };
    node.moved = false;
    node.fixed = true;
    event.currentTarget.setPointerCapture(event.pointerId);
  }

  drag(event) {
    if (!this.dragging) {
      return;
    }
    const { node, start } = this.dragging;
    const here = this.point(event);
    if (Math.hypot(here.x - start.x, here.y - start.y) > 4) {
      node.moved = true;
    }
    if (node.moved) {
      node.x = Math.min(WIDTH - MARGIN, Math.max(MARGIN, here.x));
      node.y = Math.min(HEIGHT - MARGIN, Math.max(MARGIN, here.y));
      this.start(Math.max(this.alpha, 0.3));
    }
  }

  endDrag() {
    if (this.dragging) {
      this.dragging.node.fixed = false;
      this.dragging = null;
    }
  }
}
