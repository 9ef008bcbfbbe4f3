// A form for the input a job waits for (`job.waiting`), built from its JSON schema: strings,
// numbers, integers, booleans and enums, as one field or the properties of an object.

/** The fields of `schema`: `[{name, label, schema, required}]`; `name` null: the value itself. */
function fieldsOf(schema) {
  if (schema?.type === "object" && schema.properties) {
    const required = new Set(schema.required || []);
    return Object.entries(schema.properties).map(([name, property]) => ({
      name,
      label: property.title || name,
      schema: property,
      required: required.has(name),
    }));
  }
  return [{ name: null, label: "Value", schema: schema || {}, required: true }];
}

function control(field, id) {
  const { schema } = field;
  let input;
  if (Array.isArray(schema.enum)) {
    input = document.createElement("select");
    for (const choice of schema.enum) {
      const option = document.createElement("option");
      option.value = JSON.stringify(choice);
      option.textContent = String(choice);
      input.append(option);
    }
  } else {
    input = document.createElement("input");
    if (schema.type === "boolean") input.type = "checkbox";
    else if (schema.type === "number" || schema.type === "integer") {
      input.type = "number";
      input.step = schema.type === "integer" ? "1" : "any";
    } else input.type = "text";
    if (schema.default !== undefined && input.type !== "checkbox") input.value = schema.default;
    if (schema.default === true) input.checked = true;
  }
  input.id = id;
  input.required = field.required && input.type !== "checkbox";
  return input;
}

function valueOf(field, input) {
  const { schema } = field;
  if (Array.isArray(schema.enum)) return JSON.parse(input.value);
  if (schema.type === "boolean") return input.checked;
  if (schema.type === "number" || schema.type === "integer") {
    return input.value === "" ? undefined : Number(input.value);
  }
  if (schema.type === "string") return input.value;
  try {
    return JSON.parse(input.value); // any JSON value: numbers, lists, objects
  } catch {
    return input.value;
  }
}

/**
 * Render the form for `request` (`{name, schema, prompt}`) into `container`; `submit(value)`
 * sends it and resolves, or rejects with the server's error, shown under the form.
 */
export function renderInputForm(container, request, submit) {
  const form = document.createElement("form");
  form.className = "input-form";
  const title = document.createElement("h3");
  title.textContent = `Input: ${request.name}`;
  const prompt = document.createElement("p");
  prompt.textContent = request.prompt || "This job waits for input.";
  form.append(title, prompt);
  const fields = fieldsOf(request.schema);
  const inputs = fields.map((field, index) => {
    const id = `input-${index}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = field.label;
    const input = control(field, id);
    const row = document.createElement("p");
    row.append(label, " ", input);
    form.append(row);
    return input;
  });
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Send input";
  const status = document.createElement("p");
  status.className = "error";
  status.setAttribute("role", "alert");
  form.append(button, status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let value;
    if (fields.length === 1 && fields[0].name === null) value = valueOf(fields[0], inputs[0]);
    else {
      value = {};
      fields.forEach((field, index) => {
        const item = valueOf(field, inputs[index]);
        if (item !== undefined) value[field.name] = item;
      });
    }
    button.disabled = true;
    status.textContent = "";
    try {
      await submit(value);
      status.className = "help";
      status.textContent = "Sent.";
    } catch (error) {
      status.textContent = error.message;
      button.disabled = false;
    }
  });
  container.replaceChildren(form);
}
