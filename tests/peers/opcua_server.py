"""An OPC UA server from Python asyncua (a peer we did not write) for the
OPC UA connector tests.

Usage: python opcua_server.py PORT DIR [--shift] [--bulk N] [--max-items-per-call M]

Listens on opc.tcp://127.0.0.1:PORT/ with every endpoint the edge supports:
None, and Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss with
Sign and SignAndEncrypt. Its certificate and key live in DIR (made on the
first start, reused after a restart). Users: anonymous, any X509 user
certificate, or `edge` with the password `s3cret`; any other password is
refused (BadUserAccessDenied).

Namespace `urn:marktwin:test:line`. `--shift` registers another namespace
first, so the line's namespace gets a different index (as after a server
upgrade). Nodes under Objects/Line1 (browse names in that namespace):

  GoodCount  UInt64  +1 every 100 ms            s=Line1.GoodCount
  Speed      Double  EURange 0..600              s=Line1.Speed
  Step       Double  EURange 0..1000; +1 every 100 ms, +50 every 10th step
  Temp       Double  status cycles Good, Uncertain, Bad every 100 ms
  State      String  "running"

`--bulk N` adds N Double variables s=Bulk.0000 ... under Objects/Bulk.
`--max-items-per-call M` publishes M as MaxMonitoredItemsPerCall and refuses
(BadTooManyOperations) a CreateMonitoredItems call with more items; every
accepted call prints `CREATE_ITEMS <count>`.

Prints READY once it listens.
"""

import argparse
import asyncio
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from asyncua.server.subscription_service import SubscriptionService
from cryptography.x509.oid import ExtendedKeyUsageOID

NS = "urn:marktwin:test:line"
APP_URI = "urn:marktwin:test:peer"


class Users(UserManager):
    def get_user(self, iserver, username=None, password=None, certificate=None):
        # `certificate` is the channel's or the X509 token's certificate:
        # anonymous and certificate users are both let in.
        if username is None:
            return User(role=UserRole.User)
        if username == "edge" and password == "s3cret":
            return User(role=UserRole.User, name="edge")
        return None


def limit_create_calls(limit):
    original = SubscriptionService.create_monitored_items

    async def create(self, params):
        n = len(params.ItemsToCreate)
        if n > limit:
            print(f"REFUSED_ITEMS {n}", flush=True)
            raise ua.uaerrors.BadTooManyOperations()
        print(f"CREATE_ITEMS {n}", flush=True)
        return await original(self, params)

    SubscriptionService.create_monitored_items = create


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("dir", type=Path)
    p.add_argument("--shift", action="store_true")
    p.add_argument("--bulk", type=int, default=0)
    p.add_argument("--max-items-per-call", type=int, default=0)
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    a.dir.mkdir(parents=True, exist_ok=True)
    key, cert = a.dir / "server_key.pem", a.dir / "server_cert.der"
    await setup_self_signed_certificate(
        key,
        cert,
        APP_URI,
        "127.0.0.1",  # the host name the tests connect with
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        {"countryName": "DE", "organizationName": "marktwin tests", "commonName": "asyncua peer"},
    )
    if a.max_items_per_call:
        limit_create_calls(a.max_items_per_call)

    server = Server(user_manager=Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{a.port}/")
    server.set_server_name("marktwin asyncua peer")
    await server.set_application_uri(APP_URI)
    P = ua.SecurityPolicyType
    server.set_security_policy(
        [
            P.NoSecurity,
            P.Basic256Sha256_Sign,
            P.Basic256Sha256_SignAndEncrypt,
            P.Aes128Sha256RsaOaep_Sign,
            P.Aes128Sha256RsaOaep_SignAndEncrypt,
            P.Aes256Sha256RsaPss_Sign,
            P.Aes256Sha256RsaPss_SignAndEncrypt,
        ]
    )
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    if a.shift:
        await server.register_namespace("urn:marktwin:test:other")
    ns = await server.register_namespace(NS)

    line = await server.nodes.objects.add_object(ua.NodeId("Line1", ns), ua.QualifiedName("Line1", ns))

    async def var(name, value, vtype, eu_range=None):
        node = await line.add_variable(
            ua.NodeId(f"Line1.{name}", ns), ua.QualifiedName(name, ns), ua.Variant(value, vtype)
        )
        if eu_range is not None:
            await node.add_property(
                ua.NodeId(f"Line1.{name}.EURange", ns),
                ua.QualifiedName("EURange", 0),
                ua.Variant(ua.Range(Low=eu_range[0], High=eu_range[1]), ua.VariantType.ExtensionObject),
            )
        return node

    count = await var("GoodCount", 0, ua.VariantType.UInt64)
    speed = await var("Speed", 0.0, ua.VariantType.Double, (0.0, 600.0))
    step = await var("Step", 0.0, ua.VariantType.Double, (0.0, 1000.0))
    temp = await var("Temp", 20.0, ua.VariantType.Double)
    await var("State", "running", ua.VariantType.String)

    if a.bulk:
        bulk = await server.nodes.objects.add_object(ua.NodeId("Bulk", ns), ua.QualifiedName("Bulk", ns))
        for i in range(a.bulk):
            await bulk.add_variable(
                ua.NodeId(f"Bulk.{i:04}", ns), ua.QualifiedName(f"B{i:04}", ns), ua.Variant(float(i), ua.VariantType.Double)
            )

    async with server:
        if a.max_items_per_call:
            limit_node = server.get_node(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)
            await limit_node.write_value(ua.Variant(a.max_items_per_call, ua.VariantType.UInt32))
        print("READY", flush=True)
        statuses = [ua.StatusCodes.Good, ua.StatusCodes.UncertainLastUsableValue, ua.StatusCodes.BadSensorFailure]
        i = 0
        step_value = 0.0
        while True:
            await asyncio.sleep(0.1)
            i += 1
            await count.write_value(ua.Variant(i, ua.VariantType.UInt64))
            await speed.write_value(ua.Variant(300.0 + 200.0 * math.sin(i / 20.0), ua.VariantType.Double))
            step_value = (step_value + (50.0 if i % 10 == 0 else 1.0)) % 1000.0
            await step.write_value(ua.Variant(step_value, ua.VariantType.Double))
            dv = ua.DataValue(
                ua.Variant(20.0 + i % 7, ua.VariantType.Double),
                StatusCode=ua.StatusCode(statuses[i % 3]),
                SourceTimestamp=datetime.now(timezone.utc),
            )
            await temp.write_value(dv)


if __name__ == "__main__":
    asyncio.run(main())
