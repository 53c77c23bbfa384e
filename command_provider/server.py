"""The `command` resource provider as the engine sees it: a gRPC server on loopback whose port is
the first line of stdout, answering the calls a deployment makes (GetPluginInfo, Configure,
Check, Diff, Create, Read, Update, Delete, Cancel).

It reports version 1.2.1, the version `pulumi_command` asks for, and keeps 1.2.1's state shape
(outputs are the inputs plus `stdout`/`stderr`), so a stack can move between it and the official
plugin. What it stores is what the engine sent: a secret input stays a secret; the connection,
which holds the private key, is a secret output.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import empty_pb2

from . import rules, ssh, wire
from .protos import engine_pb2, engine_pb2_grpc, plugin_pb2, provider_pb2, provider_pb2_grpc

VERSION = "1.2.1"
FRAMEWORK_KEY = {"__pulumi-go-provider-version": "1.2.0"}
_MAX_MESSAGE = 400 * 1024 * 1024
_KIND = {
    ("add", False): provider_pb2.PropertyDiff.ADD,
    ("add", True): provider_pb2.PropertyDiff.ADD_REPLACE,
    ("delete", False): provider_pb2.PropertyDiff.DELETE,
    ("delete", True): provider_pb2.PropertyDiff.DELETE_REPLACE,
    ("update", False): provider_pb2.PropertyDiff.UPDATE,
    ("update", True): provider_pb2.PropertyDiff.UPDATE_REPLACE,
}


class Provider(provider_pb2_grpc.ResourceProviderServicer):
    def __init__(self, engine_address: str | None) -> None:
        self.cancelled = threading.Event()
        self.engine = engine_pb2_grpc.EngineStub(grpc.insecure_channel(engine_address)) if engine_address else None

    # -- the engine's conversation ------------------------------------------------------------

    def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return plugin_pb2.PluginInfo(version=VERSION)

    def Configure(self, request: Any, context: Any) -> Any:
        return provider_pb2.ConfigureResponse(
            acceptSecrets=True, supportsPreview=True, acceptResources=False, acceptOutputs=False
        )

    def Check(self, request: Any, context: Any) -> Any:
        inputs, failures = rules.check(rules.type_of(request.urn), wire.to_python(request.news))
        return provider_pb2.CheckResponse(
            inputs=wire.to_struct(inputs),
            failures=[provider_pb2.CheckFailure(property=p, reason=r) for p, r in failures],
        )

    def Diff(self, request: Any, context: Any) -> Any:
        changed, replaces = rules.diff(
            rules.type_of(request.urn),
            wire.to_python(request.olds),
            wire.to_python(request.news),
            list(request.ignoreChanges),
        )
        return provider_pb2.DiffResponse(
            changes=provider_pb2.DiffResponse.DIFF_SOME if changed else provider_pb2.DiffResponse.DIFF_NONE,
            replaces=replaces,
            diffs=sorted(changed),
            deleteBeforeReplace=False,
            hasDetailedDiff=True,
            detailedDiff={
                k: provider_pb2.PropertyDiff(kind=_KIND[(kind, k in replaces)], inputDiff=True)
                for k, kind in changed.items()
            },
        )

    def Create(self, request: Any, context: Any) -> Any:
        typ, urn = rules.type_of(request.urn), request.urn
        inputs = wire.to_python(request.properties)
        if typ == rules.COMMAND:
            resource_id = rules.name_of(urn) + secrets.token_hex(8)
            if request.preview:
                # Known only once the command ran; the program must not act on a guess.
                return _created(resource_id, {**rules.copy_outputs(inputs), "stdout": wire.UNKNOWN, "stderr": wire.UNKNOWN})
            command = wire.reveal(inputs.get("create"))
            if command is None:
                return _created(resource_id, rules.outputs_after_run(inputs, "", ""))
            try:
                result = self._run(urn, inputs, command, {}, request.timeout)
            except (ssh.DialError, ssh.CommandError) as e:
                # As 1.2.1: a failed create leaves no resource in the state (no partial state), so
                # the next `up` creates it again and nothing will run its delete.
                return _fail(context, e)
            return _created(resource_id, rules.outputs_after_run(inputs, result.stdout, result.stderr))
        if request.preview:
            return _created("", rules.copy_outputs(inputs))
        try:
            self._copy(inputs, request.timeout)
        except (ssh.DialError, ssh.CommandError) as e:
            return _fail(context, e)
        return _created(secrets.token_hex(8), rules.copy_outputs(inputs))

    def Update(self, request: Any, context: Any) -> Any:
        typ, urn = rules.type_of(request.urn), request.urn
        olds, news = wire.to_python(request.olds), wire.to_python(request.news)
        if typ == rules.COMMAND:
            kept = {k: olds.get(k, "") for k in ("stdout", "stderr")}
            if request.preview:
                # As 1.2.1 (infer's default flow: every output depends on every input): what the
                # command will print is not known until it ran.
                return _updated({**rules.copy_outputs(news), "stdout": wire.UNKNOWN, "stderr": wire.UNKNOWN})
            command = wire.reveal(news.get("update") or news.get("create"))
            if command is None:
                return _updated({**rules.copy_outputs(news), **kept})
            try:
                result = self._run(urn, news, command, _previous_output_env(news, olds), request.timeout)
            except (ssh.DialError, ssh.CommandError) as e:
                return _fail(context, e)
            return _updated(rules.outputs_after_run(news, result.stdout, result.stderr))
        if not request.preview and rules.needs_copy(olds, news):
            try:
                self._copy(news, request.timeout)
            except (ssh.DialError, ssh.CommandError) as e:
                return _fail(context, e)
        return _updated(rules.copy_outputs(news))

    def Delete(self, request: Any, context: Any) -> Any:
        stored = wire.to_python(request.properties)
        if rules.type_of(request.urn) == rules.COMMAND:
            command = wire.reveal(stored.get("delete"))
            if command:
                # With the stored inputs, the old connection included: it undoes what they made.
                try:
                    self._run(request.urn, stored, command, _previous_output_env(stored, stored), request.timeout)
                except (ssh.DialError, ssh.CommandError) as e:
                    return _fail(context, e)
        return empty_pb2.Empty()

    def Read(self, request: Any, context: Any) -> Any:
        # 1.2.1 reads nothing back from a host: a refresh keeps what the state says.
        return provider_pb2.ReadResponse(id=request.id, properties=request.properties, inputs=request.inputs)

    def Cancel(self, request: Any, context: Any) -> Any:
        self.cancelled.set()
        return empty_pb2.Empty()

    def CheckConfig(self, request: Any, context: Any) -> Any:
        # The official plugin stores its framework's version with the provider's inputs; the same
        # key here keeps the default provider's state the same, so a stack can move either way.
        return provider_pb2.CheckResponse(inputs=wire.to_struct({**wire.to_python(request.news), **FRAMEWORK_KEY}))

    def DiffConfig(self, request: Any, context: Any) -> Any:
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)

    # -- doing it -----------------------------------------------------------------------------

    def _connection(self, inputs: dict[str, Any]) -> ssh.Connection:
        return ssh.Connection.of({**rules.CONNECTION_DEFAULTS, **wire.reveal(inputs["connection"])})

    def _run(self, urn: str, inputs: dict[str, Any], command: str, env: dict[str, str], timeout: float) -> ssh.Result:
        deadline = time.monotonic() + timeout if timeout else None
        logging = inputs.get("logging") or "stdoutAndStderr"
        shown = self._log_lines(urn) if logging != "none" else (lambda _: None)
        transport = ssh.dial(self._connection(inputs), self.cancelled, self._status(urn))
        try:
            return ssh.run(
                transport, command, wire.reveal(inputs.get("stdin")) or "", env, shown, deadline, self.cancelled
            )
        finally:
            transport.close()

    def _copy(self, inputs: dict[str, Any], timeout: float) -> None:
        source = wire.reveal(inputs["source"])
        transport = ssh.dial(self._connection(inputs), self.cancelled)
        try:
            text = source.get("text") if wire.kind_of(source) == "asset" and not source.get("path") else None
            ssh.copy(transport, source.get("path", ""), inputs["remotePath"], text)
        finally:
            transport.close()

    def _log_lines(self, urn: str) -> Any:
        def log(line: str) -> None:
            self._log(urn, line, engine_pb2.INFO, ephemeral=False)

        return log

    def _status(self, urn: str) -> Any:
        def status(message: str) -> None:
            self._log(urn, message, engine_pb2.INFO, ephemeral=True)

        return status

    def _log(self, urn: str, message: str, severity: Any, ephemeral: bool) -> None:
        if self.engine is None:
            return
        try:
            self.engine.Log(engine_pb2.LogRequest(severity=severity, message=message, urn=urn, ephemeral=ephemeral))
        except grpc.RpcError:
            pass  # the engine is going away; the command's result still counts


def _previous_output_env(inputs: dict[str, Any], previous: dict[str, Any]) -> dict[str, str]:
    """1.2.1 offers the last stdout/stderr to the command unless addPreviousOutputInEnv is false."""
    if inputs.get("addPreviousOutputInEnv") is False:
        return {}
    names = {"stdout": "PULUMI_COMMAND_STDOUT", "stderr": "PULUMI_COMMAND_STDERR"}
    return {names[k]: previous[k] for k in names if isinstance(previous.get(k), str) and previous[k] and previous[k] != wire.UNKNOWN}


def _created(resource_id: str, outputs: dict[str, Any]) -> Any:
    return provider_pb2.CreateResponse(id=resource_id, properties=wire.to_struct(outputs))


def _updated(outputs: dict[str, Any]) -> Any:
    return provider_pb2.UpdateResponse(properties=wire.to_struct(outputs))


def _fail(context: Any, error: Exception) -> Any:
    """Ends the call with the error; the engine shows it under the resource's name."""
    context.set_code(grpc.StatusCode.UNKNOWN)
    context.set_details(str(error))
    return None


def main(argv: list[str]) -> None:
    # The engine runs `pulumi-resource-command [flags] ENGINE_ADDRESS`. Paramiko's own log would
    # reach the engine's output through stderr; what matters reaches it as the call's error.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    positional = [a for a in argv[1:] if not a.startswith("-")]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=128),
        options=[("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)],
    )
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(Provider(positional[-1] if positional else None), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    server.wait_for_termination()
