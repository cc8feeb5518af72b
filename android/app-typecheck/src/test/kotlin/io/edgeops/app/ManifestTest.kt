package io.edgeops.app

import org.w3c.dom.Element
import java.io.File
import javax.xml.parsers.DocumentBuilderFactory
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertTrue

/**
 * What aapt and the device would refuse only at build or run time, checked here: every component the manifest
 * declares is a compiled class of the right framework type, and the permissions the code needs are declared.
 */
class ManifestTest {
    private val appDir = File(System.getProperty("app.dir") ?: "../app")
    private val manifest = DocumentBuilderFactory.newInstance().apply { isNamespaceAware = true }
        .newDocumentBuilder().parse(File(appDir, "src/main/AndroidManifest.xml")).documentElement
    private val namespace = Regex("""namespace = "([^"]+)"""").find(File(appDir, "build.gradle.kts").readText())!!.groupValues[1]

    private fun elements(tag: String): List<Element> =
        manifest.getElementsByTagName(tag).let { list -> (0 until list.length).map { list.item(it) as Element } }

    private fun Element.android(name: String): String = getAttributeNS(ANDROID, name)

    private fun componentClass(element: Element): Class<*> {
        val name = element.android("name").let { if (it.startsWith(".")) namespace + it else it }
        return Class.forName(name, false, javaClass.classLoader)
    }

    @Test
    fun `every activity and service is a compiled class of the right type`() {
        assertEquals("io.edgeops.app", namespace)
        val activities = elements("activity")
        val services = elements("service")
        assertTrue(activities.isNotEmpty() && services.isNotEmpty())
        for (activity in activities) {
            assertTrue(android.app.Activity::class.java.isAssignableFrom(componentClass(activity)), activity.android("name"))
        }
        for (service in services) {
            assertTrue(android.app.job.JobService::class.java.isAssignableFrom(componentClass(service)), service.android("name"))
            // JobScheduler refuses to schedule a job whose service lacks this permission.
            assertEquals("android.permission.BIND_JOB_SERVICE", service.android("permission"))
        }
        val launcher = activities.single { it.getElementsByTagName("category").length > 0 }
        assertEquals("true", launcher.android("exported"))
    }

    @Test
    fun `declares the permissions the code needs`() {
        val declared = elements("uses-permission").map { it.android("name") }.toSet()
        val needed = setOf(
            "android.permission.BLUETOOTH_SCAN", // BluetoothLeScanner, Android 12+
            "android.permission.BLUETOOTH_CONNECT", // BluetoothGatt, Android 12+
            "android.permission.ACCESS_FINE_LOCATION", // BLE scanning, Android 8-11
            "android.permission.INTERNET",
            "android.permission.ACCESS_NETWORK_STATE", // JobInfo network conditions, ConnectivityManager
            "android.permission.RECEIVE_BOOT_COMPLETED", // JobInfo.Builder.setPersisted
        )
        assertEquals(emptySet(), needed - declared, "missing from the manifest")
    }

    private companion object {
        const val ANDROID = "http://schemas.android.com/apk/res/android"
    }
}
