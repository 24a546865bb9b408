"""The official XenAPI Python SDK against `abd sim serve`.

Starts the simulator (the binary named by $ABD_BIN) on a free port and drives
it as a client would drive a real pool master.
"""

import os
import shutil
import ssl
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import xmlrpc.client

import XenAPI

SCENARIO = os.path.join(os.path.dirname(__file__), "..", "..", "scenarios", "quickstart.toml")
CLASSES = ["pool", "host", "host_metrics", "SR", "PBD", "network", "PIF", "VM",
           "VM_guest_metrics", "VIF", "VBD", "VDI", "task"]


def stop(server):
    """Stops a served simulator and closes its output."""
    server.terminate()
    server.wait(timeout=10)
    server.stdout.close()


class SimulatedPool(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = subprocess.Popen(
            [os.environ["ABD_BIN"], "sim", "serve", SCENARIO,
             "--listen", "127.0.0.1:0", "--speed", "1000"],
            stdout=subprocess.PIPE, text=True)
        line = cls.server.stdout.readline().split()
        assert line[:3] == ["pool", "lab", "xapi"], line
        cls.url = line[3]
        member = cls.server.stdout.readline().split()
        assert member[:3] == ["member", "lab-host-2", "xapi"], member
        cls.member_url = member[3]

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)

    def setUp(self):
        self.session = XenAPI.Session(self.url)
        self.session.xenapi.login_with_password("root", "password", "2.21", "abd-tests")
        self.x = self.session.xenapi

    def tearDown(self):
        self.session.xenapi.session.logout()
        self.session("close")()

    def failure(self, call, *args):
        with self.assertRaises(XenAPI.Failure) as raised:
            call(*args)
        return raised.exception.details

    def test_api_version_reads_pool_master_and_host(self):
        self.assertEqual(self.session.API_version, "2.21")

    def test_every_class_reads(self):
        for cls in CLASSES:
            records = getattr(self.x, cls).get_all_records()
            refs = getattr(self.x, cls).get_all()
            self.assertEqual(sorted(records.keys()), sorted(refs), cls)
            for ref in refs[:3]:
                self.assertEqual(getattr(self.x, cls).get_record(ref), records[ref], cls)
        vms = self.x.VM.get_all_records()
        some_vm = next(iter(vms.values()))
        for field in ["HVM_boot_params", "bios_strings", "actions_after_crash", "NVRAM", "VCPUs_params"]:
            self.assertIn(field, some_vm)
        self.assertEqual(len(some_vm), 92, "every VM field of the datamodel (xen-api of August 2026)")
        # Datetimes travel as XML-RPC dateTime.iso8601, as XAPI sends them.
        self.assertIsInstance(some_vm["snapshot_time"], xmlrpc.client.DateTime)
        self.assertEqual(some_vm["snapshot_time"].value, "19700101T00:00:00Z")
        vm_ref = next(iter(vms.keys()))
        self.assertIsInstance(self.x.VM.get_snapshot_time(vm_ref), xmlrpc.client.DateTime)
        names = sorted(r["name_label"] for r in vms.values() if not r["is_control_domain"])
        self.assertEqual(names, ["vm-%02d" % i for i in range(1, 13)])
        host = self.x.host.get_all()[0]
        self.assertGreater(int(self.x.host.compute_free_memory(host)), 0)

    def test_clone_start_shutdown_destroy(self):
        vm = self.x.VM.get_by_name_label("vm-07")[0]
        self.x.VM.clean_shutdown(vm)
        self.assertEqual(self.x.VM.get_power_state(vm), "Halted")
        clone = self.x.VM.clone(vm, "sdk-clone")
        self.assertEqual(self.x.VM.get_name_label(clone), "sdk-clone")
        self.x.VM.start(clone, False, False)
        self.assertEqual(self.x.VM.get_power_state(clone), "Running")
        self.x.VM.hard_shutdown(clone)
        vdis = [self.x.VBD.get_VDI(vbd) for vbd in self.x.VM.get_VBDs(clone)]
        self.x.VM.destroy(clone)
        for vdi in vdis:
            self.x.VDI.destroy(vdi)
        self.assertEqual(self.x.VM.get_by_name_label("sdk-clone"), [])
        self.x.VM.start(vm, False, False)

    def test_create_a_vm_whose_start_is_blocked(self):
        source = self.x.VM.get_record(self.x.VM.get_by_name_label("vm-02")[0])
        required = ["user_version", "is_a_template", "affinity", "memory_static_max",
                    "memory_dynamic_max", "memory_dynamic_min", "memory_static_min",
                    "VCPUs_params", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown",
                    "actions_after_reboot", "actions_after_crash", "PV_bootloader", "PV_kernel",
                    "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args",
                    "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus",
                    "other_config", "recommendations"]
        record = dict((k, source[k]) for k in required)
        record.update(name_label="sdk-created", is_a_template=False)
        incomplete = dict(record)
        del incomplete["VCPUs_max"]
        self.assertEqual(self.failure(self.x.VM.create, incomplete),
                         ["FIELD_TYPE_ERROR", "VCPUs_max"])
        vm = self.x.VM.create(record)
        self.assertEqual(self.x.VM.get_power_state(vm), "Halted")
        self.assertEqual(self.x.VM.get_memory_static_max(vm), source["memory_static_max"])
        self.x.VM.add_to_blocked_operations(vm, "start", "a replica")
        self.assertEqual(self.x.VM.get_blocked_operations(vm), {"start": "a replica"})
        self.assertEqual(self.failure(self.x.VM.start, vm, False, False),
                         ["OPERATION_BLOCKED", vm, "a replica"])
        self.x.VM.remove_from_blocked_operations(vm, "start")
        self.x.VM.start(vm, False, False)
        self.assertEqual(self.x.VM.get_power_state(vm), "Running")
        self.x.VM.hard_shutdown(vm)
        self.x.VM.destroy(vm)

    def test_errors_are_failures_with_xapi_codes(self):
        bad = XenAPI.Session(self.url)
        details = self.failure(bad.xenapi.login_with_password, "root", "wrong")
        bad("close")()
        self.assertEqual(details[0], "SESSION_AUTHENTICATION_FAILED")
        self.assertEqual(self.failure(self.x.VM.get_record, "OpaqueRef:nope"),
                         ["HANDLE_INVALID", "VM", "OpaqueRef:nope"])
        running = self.x.VM.get_by_name_label("vm-01")[0]
        self.assertEqual(self.failure(self.x.VM.start, running, False, False),
                         ["VM_BAD_POWER_STATE", running, "halted", "running"])
        self.assertEqual(self.failure(self.x.VM.get_record)[0], "MESSAGE_PARAMETER_COUNT_MISMATCH")
        self.assertEqual(self.failure(self.x.VM.no_such_call, running),
                         ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_call"])

    def wait_task(self, task):
        deadline = time.time() + 10
        while self.x.task.get_status(task) == "pending" and time.time() < deadline:
            time.sleep(0.05)
        return self.x.task.get_record(task)

    def test_async_call_returns_a_task_that_completes(self):
        vm = self.x.VM.get_by_name_label("vm-08")[0]
        self.x.VM.clean_shutdown(vm)
        task = self.x.Async.VM.clone(vm, "async-clone")
        self.assertTrue(task.startswith("OpaqueRef:"))
        record = self.wait_task(task)
        self.assertEqual(record["status"], "success")
        self.assertEqual(float(record["progress"]), 1.0)
        clone = self.x.VM.get_by_name_label("async-clone")[0]
        self.assertEqual(record["result"], "<value>%s</value>" % clone)
        self.x.task.destroy(task)

        running = self.x.VM.get_by_name_label("vm-01")[0]
        failing = self.x.Async.VM.start(running, False, False)
        record = self.wait_task(failing)
        self.assertEqual(record["status"], "failure")
        self.assertEqual(record["error_info"], ["VM_BAD_POWER_STATE", running, "halted", "running"])
        self.x.task.destroy(failing)

        vdis = [self.x.VBD.get_VDI(vbd) for vbd in self.x.VM.get_VBDs(clone)]
        self.x.VM.destroy(clone)
        for vdi in vdis:
            self.x.VDI.destroy(vdi)
        self.x.VM.start(vm, False, False)

    def test_event_from_follows_tasks(self):
        # How clients (Xen Orchestra's among them) wait for an Async call:
        # watch the task class until the task's status leaves "pending".
        event_from = getattr(self.x.event, "from")
        token = event_from(["task"], "", 1.0)["token"]
        vm = self.x.VM.get_by_name_label("vm-11")[0]
        task = self.x.Async.VM.snapshot(vm, "watched-snapshot")
        seen, deadline = [], time.time() + 10
        while time.time() < deadline and not any(
                e["snapshot"].get("status") == "success" for e in seen):
            batch = event_from(["task"], token, 5.0)
            token = batch["token"]
            self.assertIn("task", batch["valid_ref_counts"])
            seen += [e for e in batch["events"] if e["ref"] == task]
        self.assertEqual(seen[0]["operation"], "add", seen)
        self.assertEqual(seen[-1]["snapshot"]["status"], "success", seen)
        snapshot = self.x.task.get_result(task).replace("<value>", "").replace("</value>", "")
        self.x.task.destroy(task)
        gone = event_from(["task"], token, 1.0)["events"]
        self.assertIn("del", [e["operation"] for e in gone if e["ref"] == task], gone)
        vdis = [self.x.VBD.get_VDI(vbd) for vbd in self.x.VM.get_VBDs(snapshot)]
        self.x.VM.destroy(snapshot)
        for vdi in vdis:
            self.x.VDI.destroy(vdi)

    def test_event_from_reports_changes(self):
        everything = getattr(self.x.event, "from")(["vm"], "", 1.0)
        adds = [e for e in everything["events"] if e["operation"] == "add"]
        self.assertEqual(len(adds), int(everything["valid_ref_counts"]["vm"]))
        token = everything["token"]
        vm = self.x.VM.get_by_name_label("vm-09")[0]
        self.x.VM.add_to_other_config(vm, "watched", "yes")
        later = getattr(self.x.event, "from")(["vm"], token, 5.0)
        mods = [e for e in later["events"] if e["ref"] == vm and e["operation"] == "mod"]
        self.assertTrue(mods, later)
        self.assertEqual(mods[-1]["snapshot"]["other_config"]["watched"], "yes")
        injected = self.x.event.inject("pool", self.x.pool.get_all()[0])
        self.assertGreater(injected, later["token"])

    def test_a_member_answers_host_is_slave_naming_the_master(self):
        member = XenAPI.Session(self.member_url)
        with self.assertRaises(XenAPI.Failure) as raised:
            member.xenapi.login_with_password("root", "password", "2.21", "abd-tests")
        self.assertEqual(raised.exception.details, ["HOST_IS_SLAVE", "127.0.0.1"])
        member("close")()

    def test_host_addresses_are_where_the_hosts_answer(self):
        # A client failing over to a member reads its address from the host
        # records: on loopback that is where its endpoint listens.
        served = {urllib.parse.urlsplit(u).hostname for u in (self.url, self.member_url)}
        addresses = {h["address"] for h in self.x.host.get_all_records().values()}
        self.assertEqual(addresses, served)

    def test_list_methods(self):
        methods = self.session.system.listMethods()
        self.assertIn("VM.get_all_records", methods)
        self.assertIn("Async.VM.clone", methods)

    def test_allowed_devices(self):
        vm = self.x.VM.get_by_name_label("vm-10")[0]
        used = {self.x.VIF.get_device(v) for v in self.x.VM.get_VIFs(vm)}
        allowed = self.x.VM.get_allowed_VIF_devices(vm)
        self.assertEqual(sorted(set(allowed) | used, key=int), [str(n) for n in range(16)])
        self.assertFalse(used & set(allowed))
        self.assertNotIn("0", self.x.VM.get_allowed_VBD_devices(vm))


class SimulatedPoolOverHttps(unittest.TestCase):
    """`abd sim serve --tls DIR`: a self-signed certificate, as a fresh host has."""

    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="abd-tls-")
        cls.server = subprocess.Popen(
            [os.environ["ABD_BIN"], "sim", "serve", SCENARIO,
             "--listen", "127.0.0.1:0", "--speed", "1000", "--tls", cls.certs],
            stdout=subprocess.PIPE, text=True)
        line = cls.server.stdout.readline().split()
        assert line[:3] == ["pool", "lab", "xapi"] and line[3].startswith("https://"), line
        cls.url = line[3]
        cert = cls.server.stdout.readline().split()
        assert cert[0] == "certificate", cert
        cls.cert = cert[1]

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)
        shutil.rmtree(cls.certs, ignore_errors=True)

    def login(self, session):
        session.xenapi.login_with_password("root", "password", "2.21", "abd-tests")
        hosts = session.xenapi.host.get_all()
        session.xenapi.session.logout()
        session("close")()
        return hosts

    def test_verified_by_default_so_a_self_signed_certificate_is_refused(self):
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.login(XenAPI.Session(self.url))

    def test_trusting_the_pools_certificate_connects(self):
        context = ssl.create_default_context(cafile=self.cert)
        transport = xmlrpc.client.SafeTransport(context=context)
        self.assertEqual(len(self.login(XenAPI.Session(self.url, transport=transport))), 2)

    def test_skipping_verification_connects(self):
        self.assertEqual(len(self.login(XenAPI.Session(self.url, ignore_ssl=True))), 2)


if __name__ == "__main__":
    unittest.main()
