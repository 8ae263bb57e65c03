"""Code that runs by opt-in is named: auto_map, *.py in a model folder, and chat templates
that reach outside jinja2's sandbox (HF tokenizer_config.json, chat_template.jinja/.json,
GGUF metadata).  Real public templates stay safe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import keishiki
from keishiki._scan.opt_in import file_findings, folder_findings, gguf_findings, template_findings
from tests.conftest import run_cli

pytest.importorskip("jinja2")

# ---- public chat templates (as published in the models' tokenizer_config.json) --------------

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content "
    "%}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA31_TOOLS = (
    "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set "
    "tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n"
    "    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if messages[0]['role'] == "
    "'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set "
    'messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = "" %}\n{%- endif %}'
    '\n{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n{%- if builtin_tools is '
    'defined or tools is not none %}\n    {{- "Environment: ipython\\n" }}\n{%- endif %}\n'
    "{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', "
    '\'code_interpreter\') | join(", ") + "\\n\\n"}}\n{%- endif %}\n{{- "Today Date: " + '
    'date_string + "\\n\\n" }}\n{%- if tools is not none and not tools_in_user_message %}\n'
    '    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- "\\n\\n" }}\n'
    '    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- "<|eot_id|>" }}\n'
    "{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role "
    "== 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n        {%- set tool_call = "
    "message.tool_calls[0].function %}\n        {{- '{\"name\": \"' + tool_call.name + '\", ' }}"
    "\n        {{- '\"parameters\": ' }}\n        {{- tool_call.arguments | tojson }}\n"
    '        {{- "}" }}\n        {{- "<|eot_id|>" }}\n    {%- endif %}\n{%- endfor %}\n'
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>"
    "\\n\\n' }}\n{%- endif %}\n"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN25_TOOLS = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == "
    "'system' %}\n        {{- messages[0]['content'] }}\n    {%- endif %}\n    {%- for tool in "
    'tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n'
    '{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == "user") or '
    '(message.role == "system" and not loop.first) or (message.role == "assistant" and not '
    "message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function "
    "is defined %}\n                {%- set tool_call = tool_call.function %}\n            "
    "{%- endif %}\n            {{- tool_call.name }}\n            {{- tool_call.arguments | "
    'tojson }}\n        {%- endfor %}\n    {%- elif message.role == "tool" %}\n        {%- if '
    '(loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n            {{- '
    "'<|im_start|>user' }}\n        {%- endif %}\n        {{- message.content }}\n        "
    '{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n            {{- '
    "'<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if "
    "add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
    "alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'"
    "}}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
    "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}"
    "{% endif %}"
)
DEEPSEEK_NS = (
    "{% set ns = namespace(is_first=false, system_prompt='') %}{%- for message in "
    "messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = "
    "message['content'] %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '<｜User｜>' + "
    "message['content'] }}{%- endif %}{%- endfor %}"
)

PUBLIC = {
    "llama3": LLAMA3,
    "llama31_tools": LLAMA31_TOOLS,
    "mistral": MISTRAL,
    "qwen2": QWEN2,
    "qwen25_tools": QWEN25_TOOLS,
    "gemma": GEMMA,
    "chatml": CHATML,
    "phi3": PHI3,
    "deepseek_namespace": DEEPSEEK_NS,
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_templates_are_safe(name):
    assert template_findings(PUBLIC[name], name) == []


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_templates_render_in_the_sandbox(name):
    """They are real templates: the sandbox renders them."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent)
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(ValueError(m))
    text = env.from_string(PUBLIC[name]).render(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        bos_token="<s>",
        eos_token="</s>",
        add_generation_prompt=True,
        tools=None,
    )
    assert "hi" in text


# template, subject named
ESCAPES = [
    ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", ".__globals__"),
    ("{{ joiner.__init__.__globals__ }}", ".__init__"),
    ("{{ lipsum.__globals__['os'] }}", ".__globals__"),
    ("{{ namespace.__init__.__globals__ }}", ".__init__"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ".__subclasses__"),
    ("{{ messages.__class__ }}", ".__class__"),
    ("{{ self._TemplateReference__context }}", "._TemplateReference__context"),
    ("{{ x._module }}", "._module"),
    ("{{ request['__builtins__'] }}", "['__builtins__']"),
    ("{{ messages|attr('__class__') }}", "|attr('__class__')"),
    ("{{ messages|attr(name) }}", "|attr(<computed>)"),
    ("{{ messages|map(attribute='__class__')|list }}", "|map('__class__')"),
    ("{{ messages|selectattr('__class__')|list }}", "|selectattr('__class__')"),
    ("{{ messages['__cl' ~ 'ass__'] }}", "[<computed>]"),
    ("{% set k = '__globals__' %}{{ cycler[k] }}", "'__globals__'"),
    ("{{ '{0.__class__}'.format(messages) }}", "str.format"),
    ("{% include 'other.jinja' %}", "include"),
    ("{% for m in messages %}{{ m }}", "unparseable-template"),
]


@pytest.mark.parametrize("text,subject", ESCAPES)
def test_templates_reaching_out_of_the_sandbox_are_named(text, subject):
    found = template_findings(text, "tokenizer_config.json: chat_template")
    assert ("unknown", subject) in [(s, g) for s, g, _ in found]
    assert all(r.startswith("tokenizer_config.json: chat_template") for _, _, r in found)


def test_an_escape_runs_unsandboxed_and_keishiki_refuses_it(tmp_path, tiny_llama):
    """The same template creates the marker under plain jinja2, fails in keishiki's renderer."""
    import jinja2

    from keishiki.runtimes.tokenizer import Tokenizer

    marker = tmp_path / "PWNED"
    evil = "{{ cycler.__init__.__globals__.os.makedirs(%r) }}" % str(marker)
    jinja2.Environment().from_string(evil).render()
    assert marker.exists()
    marker.rmdir()
    folder = shutil.copytree(tiny_llama, tmp_path / "model")
    (folder / "chat_template.jinja").write_text(evil)
    with pytest.raises(keishiki.errors.KeishikiError, match="chat template"):
        Tokenizer(folder).render_chat([{"role": "user", "content": "hi"}])
    assert not marker.exists()
    rep = keishiki.scan(folder)
    assert rep.verdict == "unknown"
    assert {f.global_ for f in rep.findings if f.severity == "unknown"} >= {".__globals__"}


# ---- model folders ------------------------------------------------------------------------


def _folder(root: Path, **files) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        name = name.replace("__", ".")
        (root / name).write_text(value if isinstance(value, str) else json.dumps(value))
    return root


def test_folder_names_auto_map_python_files_and_bad_templates(tmp_path):
    folder = _folder(
        tmp_path / "m",
        config__json={
            "model_type": "llama",
            "auto_map": {
                "AutoConfig": "configuration_x.XConfig",
                "AutoModelForCausalLM": "other/repo--modeling_x.XModel",
            },
        },
        tokenizer_config__json={
            "auto_map": {"AutoTokenizer": ["tok_x.XTok", None]},
            "chat_template": [
                {"name": "default", "template": CHATML},
                {"name": "tool_use", "template": "{{ x.__class__ }}"},
            ],
        },
        modeling_x__py="print('hi')\n",
        chat_template__jinja=LLAMA3,
    )
    found = {(Path(f.file).name, f.severity, f.global_) for f in folder_findings(folder)}
    assert found == {
        ("config.json", "unknown", "auto_map.AutoConfig"),
        ("config.json", "unknown", "auto_map.AutoModelForCausalLM"),
        ("tokenizer_config.json", "unknown", "auto_map.AutoTokenizer"),
        ("tokenizer_config.json", "unknown", ".__class__"),
        ("modeling_x.py", "unknown", "modeling_x.py"),
    }
    reasons = {f.global_: f.reason for f in folder_findings(folder)}
    assert "another repository" in reasons["auto_map.AutoModelForCausalLM"]
    assert "chat_template[tool_use]" in reasons[".__class__"]
    rep = keishiki.scan(folder)
    assert rep.verdict == "unknown"
    assert {f.global_ for f in rep.findings} >= {"auto_map.AutoConfig", "modeling_x.py"}
    assert run_cli("scan", folder)[0] == 1 and run_cli("scan", "--allow-unknown", folder)[0] == 0


def test_python_files_count_only_beside_a_model(tmp_path):
    scripts = _folder(tmp_path / "scripts", build__py="print(1)\n")
    assert folder_findings(scripts) == [] and keishiki.scan(scripts).verdict == "safe"
    (scripts / "model.safetensors").write_bytes(b"")
    assert [f.global_ for f in folder_findings(scripts)] == ["build.py"]


@pytest.mark.parametrize(
    "name,content,subject",
    [
        ("chat_template.jinja", "{{ lipsum.__globals__ }}", ".__globals__"),
        ("tool_use.jinja", "{{ x['_y'] }}", "['_y']"),
        ("chat_template.json", {"chat_template": "{{ x|attr('__dict__') }}"}, "|attr('__dict__')"),
        ("tokenizer_config.json", {"chat_template": "{% if %}"}, "unparseable-template"),
        (
            "processor_config.json",
            {"auto_map": {"AutoProcessor": "proc.P"}},
            "auto_map.AutoProcessor",
        ),
        ("config.json", {"custom_pipelines": {"x": {"impl": "pipe.X"}}}, "custom_pipelines.x"),
        ("processor_config.json", {"chat_template": "{{ x._y }}"}, "._y"),
    ],
)
def test_each_file_kind(tmp_path, name, content, subject):
    folder = _folder(tmp_path / "m", **{name.replace(".", "__"): content})
    (finding,) = file_findings(folder / name)
    assert (finding.severity, finding.global_) == ("unknown", subject)


def test_clean_hf_folder_stays_safe_and_info_shows_opt_in(tiny_llama, tmp_path):
    assert folder_findings(tiny_llama) == []
    assert keishiki.scan(tiny_llama).verdict == "safe"
    folder = shutil.copytree(tiny_llama, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_r.R"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_r.py").write_text("R = None\n")
    code, out, err = run_cli("info", folder, "--json")
    assert code == 0, err
    assert "auto_map.AutoModelForCausalLM" in out and "modeling_r.py" in out


def test_auto_map_code_runs_under_trust_remote_code(tmp_path):
    """Why auto_map is named: transformers imports the folder's code (marker appears)."""
    pytest.importorskip("transformers")
    marker = tmp_path / "PWNED"
    folder = _folder(
        tmp_path / "m",
        config__json={"model_type": "llama", "auto_map": {"AutoConfig": "configuration_x.XConfig"}},
        configuration_x__py=(
            f"open({str(marker)!r}, 'w').close()\n"
            "from transformers import LlamaConfig\n\n\n"
            "class XConfig(LlamaConfig):\n    model_type = 'llama'\n"
        ),
    )
    assert any(f.global_ == "auto_map.AutoConfig" for f in keishiki.scan(folder).findings)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, transformers; transformers.AutoConfig"
            ".from_pretrained(sys.argv[1], trust_remote_code=True)",
            str(folder),
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert marker.exists()


def test_gguf_chat_templates(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    assert gguf_findings({"tokenizer.chat_template": LLAMA3, "general.name": "x"}) == []
    found = gguf_findings({"tokenizer.chat_template.tool_use": "{{ x.__class__ }}"})
    assert [(s, g) for s, g, _ in found] == [("unknown", ".__class__")]
    for name, template, verdict in (
        ("good", QWEN2, "safe"),
        ("bad", "{{ cycler.__init__.__globals__ }}", "unknown"),
    ):
        path = tmp_path / f"{name}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_chat_template(template)
        writer.add_tensor("t", np.zeros(4, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        rep = keishiki.scan(path)
        assert rep.verdict == verdict
        if verdict == "unknown":
            assert {f.global_ for f in rep.findings} == {".__init__", ".__globals__"}
            assert all("tokenizer.chat_template" in f.reason for f in rep.findings)


def test_hf_cache_layout_links_into_blobs_are_read_by_their_names(tmp_path):
    """``models--org--name/snapshots/<rev>/config.json`` is a link into ``blobs/<hash>``."""
    repo = tmp_path / "models--org--remote"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (blobs / "0f1e").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_r.R"}}))
    (blobs / "9a8b").write_text("R = None\n")
    (snap / "config.json").symlink_to("../../blobs/0f1e")
    (snap / "modeling_r.py").symlink_to("../../blobs/9a8b")
    expected = {"auto_map.AutoModel", "modeling_r.py"}
    assert {f.global_ for f in folder_findings(repo)} == expected
    rep = keishiki.scan(repo)
    assert rep.verdict == "unknown"
    assert {f.global_ for f in rep.findings if f.severity == "unknown"} == expected


@pytest.mark.parametrize(
    "rel, flagged",
    [
        ("json.py", True),
        ("json.pyc", True),  # sourceless bytecode: imported like json.py
        ("json.cpython-311-x86_64-linux-gnu.so", True),
        ("json/__init__.py", True),  # a package right inside the model folder
        ("keishiki/__init__.pyc", True),
        ("json/decoder.pyc", True),
        ("__pycache__/modeling.cpython-311.pyc", False),  # a cache, only used beside its .py
        ("scripts/train.py", False),  # a folder of scripts, not a package
        ("scripts/util.pyc", False),
    ],
)
def test_importable_code_in_a_model_folder_is_named(tmp_path, rel, flagged):
    """A Python started in the model's folder imports what it holds before the standard
    library (``json``) or keishiki itself: every module it can import is opt-in code."""
    (tmp_path / "config.json").write_text("{}")
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * 16)
    if rel.startswith(("json/", "keishiki/")) and not rel.endswith("__init__.py"):
        (path.parent / "__init__.pyc").write_bytes(b"\x00")
    found = file_findings(path)
    assert bool(found) is flagged and all(f.severity == "unknown" for f in found)


def test_a_config_too_large_to_judge_is_not_safe(tmp_path, monkeypatch):
    from keishiki._scan import opt_in

    monkeypatch.setattr(opt_in, "_MAX_JSON", 64)
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"auto_map": {}, "pad": "x" * 100}))
    (found,) = file_findings(path)
    assert found.severity == "unknown" and "not judged" in found.reason
    path.write_text("not json")  # unreadable JSON: the loaders refuse it too
    assert file_findings(path) == []
